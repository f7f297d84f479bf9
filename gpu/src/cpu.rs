//! The CPU compositor: the reference implementation of [`crate::spec`] and
//! the fallback on machines without a GPU.
//!
//! Scaling is done separably with exactly the spec's result: for each
//! destination row the two source rows are first mixed vertically over the
//! crop's width (contiguous, vectorised), unrounded, then each destination
//! pixel mixes two of those values horizontally and rounds once. The
//! unrounded four-term sum is the same in either order, so this equals the
//! spec's horizontal-then-vertical formula exactly. Per-column taps are
//! computed once per layer and plane. Fast paths: a fill
//! is a slice fill, an unscaled layer reads its source directly, and an
//! opaque layer skips the blend. Scratch buffers are kept between calls, so
//! composing allocates nothing in steady state.

use crate::spec::{
    blend, effective_alpha, mix_and_round, mix_unrounded, plane_crop, plane_rect, tap, Plane, Tap,
};
use crate::{validate_batch, ComposeError, Compositor, Layer, Picture, Rect, Scene};

/// Composes on the calling thread. See the module doc.
#[derive(Debug, Default)]
pub struct CpuCompositor {
    /// Horizontal taps of the layer being drawn.
    columns: Vec<Tap>,
    /// The current output row's two source rows mixed vertically (samples
    /// and alpha), before the horizontal mix.
    mixed: Vec<u32>,
    mixed_alpha: Vec<u32>,
}

impl CpuCompositor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Paints one scene onto `output` (already a canvas of the scene's size).
    fn paint(&mut self, scene: &Scene, output: &mut Picture) {
        for layer in scene.layers.iter().filter(|l| !l.is_empty()) {
            for plane in Plane::ALL {
                let (canvas_w, _) = plane.size(scene.width, scene.height);
                let canvas = Canvas {
                    pixels: output.plane_mut(plane),
                    stride: canvas_w as usize,
                };
                match layer {
                    Layer::Fill { dst, color } => {
                        fill(canvas, plane_rect(*dst, plane), color.component(plane));
                    }
                    Layer::Picture {
                        source,
                        crop,
                        dst,
                        opacity,
                    } => {
                        let (source_w, _) = plane.size(source.width, source.height);
                        let layer = PlaneLayer {
                            source: source.plane(plane),
                            alpha: source.alpha_plane(plane),
                            stride: source_w as usize,
                            crop: plane_crop(*crop, source.width, source.height, plane),
                            dst: plane_rect(*dst, plane),
                            opacity: *opacity,
                        };
                        self.draw(canvas, &layer);
                    }
                }
            }
        }
    }

    fn draw(&mut self, mut canvas: Canvas<'_>, layer: &PlaneLayer<'_>) {
        let (crop, dst) = (layer.crop, layer.dst);
        if crop.is_empty() || dst.is_empty() {
            return;
        }
        if crop.w == dst.w && crop.h == dst.h {
            draw_unscaled(canvas, layer);
            return;
        }
        // Relative to the crop's first column: indices into the mixed row.
        self.columns.clear();
        self.columns
            .extend((0..dst.w).map(|i| tap(i, dst.w, 0, crop.w)));
        let constant_alpha = effective_alpha(255, layer.opacity);
        for row in 0..dst.h {
            let ty = tap(row, dst.h, crop.y, crop.h);
            mix_rows(&mut self.mixed, layer.source, layer.stride, crop, ty);
            let out = canvas.row(dst.y + row, dst.x, dst.w);
            let (mixed, columns) = (&self.mixed, &self.columns);
            match layer.alpha {
                None if constant_alpha == 255 => {
                    for (o, t) in out.iter_mut().zip(columns) {
                        *o = mix_columns(mixed, t);
                    }
                }
                None => {
                    for (o, t) in out.iter_mut().zip(columns) {
                        *o = blend(mix_columns(mixed, t), *o, constant_alpha);
                    }
                }
                Some(alpha) => {
                    mix_rows(&mut self.mixed_alpha, alpha, layer.stride, crop, ty);
                    let mixed_alpha = &self.mixed_alpha;
                    for (o, t) in out.iter_mut().zip(columns) {
                        let a = effective_alpha(mix_columns(mixed_alpha, t), layer.opacity);
                        *o = blend(mix_columns(mixed, t), *o, a);
                    }
                }
            }
        }
    }
}

/// The vertical half of the bilinear mix for one output row: the crop's
/// columns of source rows `ty.i0` and `ty.i1`, mixed with `ty.weight`,
/// unrounded. Contiguous, so it vectorises.
fn mix_rows(mixed: &mut Vec<u32>, plane: &[u8], stride: usize, crop: Rect, ty: Tap) {
    let row = |y: u32| {
        let start = y as usize * stride + crop.x as usize;
        &plane[start..start + crop.w as usize]
    };
    let (top, bottom) = (row(ty.i0), row(ty.i1));
    mixed.clear();
    mixed.extend(
        top.iter()
            .zip(bottom)
            .map(|(&t, &b)| mix_unrounded(t, b, ty.weight)),
    );
}

/// The horizontal half: mixes the two mixed columns of tap `t` and rounds.
#[inline(always)]
fn mix_columns(mixed: &[u32], t: &Tap) -> u8 {
    mix_and_round(mixed[t.i0 as usize], mixed[t.i1 as usize], t.weight)
}

impl Compositor for CpuCompositor {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn compose(&mut self, scenes: &[Scene], outputs: &mut [Picture]) -> Result<(), ComposeError> {
        validate_batch(scenes, outputs)?;
        for (scene, output) in scenes.iter().zip(outputs.iter_mut()) {
            output.prepare_canvas(scene.width, scene.height);
            self.paint(scene, output);
        }
        Ok(())
    }
}

/// One plane of an output picture.
struct Canvas<'a> {
    pixels: &'a mut [u8],
    stride: usize,
}

impl Canvas<'_> {
    /// `len` pixels of row `y` from column `x` (inside the canvas: scenes are
    /// validated).
    fn row(&mut self, y: u32, x: u32, len: u32) -> &mut [u8] {
        let start = y as usize * self.stride + x as usize;
        &mut self.pixels[start..start + len as usize]
    }
}

/// One picture layer, in one plane's coordinates.
struct PlaneLayer<'a> {
    source: &'a [u8],
    alpha: Option<&'a [u8]>,
    stride: usize,
    crop: Rect,
    dst: Rect,
    opacity: u8,
}

fn fill(mut canvas: Canvas<'_>, dst: Rect, value: u8) {
    for y in dst.y..dst.y + dst.h {
        canvas.row(y, dst.x, dst.w).fill(value);
    }
}

/// A layer whose crop and dst have the same size: every tap has weight 0,
/// so the value is the source sample itself.
fn draw_unscaled(mut canvas: Canvas<'_>, layer: &PlaneLayer<'_>) {
    let (crop, dst) = (layer.crop, layer.dst);
    let constant_alpha = effective_alpha(255, layer.opacity);
    for row in 0..dst.h {
        let start = (crop.y + row) as usize * layer.stride + crop.x as usize;
        let source = &layer.source[start..start + crop.w as usize];
        let out = canvas.row(dst.y + row, dst.x, dst.w);
        match layer.alpha {
            None if constant_alpha == 255 => out.copy_from_slice(source),
            None => {
                for (o, &v) in out.iter_mut().zip(source) {
                    *o = blend(v, *o, constant_alpha);
                }
            }
            Some(alpha) => {
                let alpha = &alpha[start..start + crop.w as usize];
                for ((o, &v), &a) in out.iter_mut().zip(source).zip(alpha) {
                    *o = blend(v, *o, effective_alpha(a, layer.opacity));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::test_support::{
        first_difference, random_picture, random_scene, reference_compose, source_pool, Rng,
    };
    use crate::{SceneError, Yuv};

    fn compose_one(scene: &Scene, output: Picture) -> Picture {
        let mut outputs = [output];
        CpuCompositor::new()
            .compose(std::slice::from_ref(scene), &mut outputs)
            .expect("compose");
        let [output] = outputs;
        output
    }

    fn picture_layer(source: &Arc<Picture>, crop: Rect, dst: Rect, opacity: u8) -> Layer {
        Layer::Picture {
            source: Arc::clone(source),
            crop,
            dst,
            opacity,
        }
    }

    fn fill(dst: Rect, y: u8, u: u8, v: u8) -> Layer {
        Layer::Fill {
            dst,
            color: Yuv { y, u, v },
        }
    }

    /// A picture of `f(x, y)` in luma coordinates: luma `f(x, y)`, chroma
    /// `f(2x, 2y)`.
    fn pattern(width: u32, height: u32, f: impl Fn(u32, u32) -> u8) -> Picture {
        let plane = |w: u32, h: u32, scale: u32| -> Vec<u8> {
            (0..h)
                .flat_map(|y| (0..w).map(move |x| (x, y)))
                .map(|(x, y)| f(scale * x, scale * y))
                .collect()
        };
        let (cw, ch) = crate::chroma_size(width, height);
        Picture {
            width,
            height,
            y: plane(width, height, 1),
            u: plane(cw, ch, 2),
            v: plane(cw, ch, 2),
            alpha: None,
        }
    }

    /// Centre-aligned bilinear scaling in floating point: what the fixed
    /// point of `spec` approximates.
    fn scaled_f64(src: &[u8], stride: u32, c: Rect, d: Rect, dx: u32, dy: u32) -> f64 {
        let pos = |i: u32, dl: u32, cl: u32| {
            let s = ((f64::from(i) + 0.5) * f64::from(cl) / f64::from(dl) - 0.5)
                .clamp(0.0, f64::from(cl - 1));
            let i0 = s.floor() as u32;
            (i0, (i0 + 1).min(cl - 1), s - f64::from(i0))
        };
        let (x0, x1, fx) = pos(dx, d.w, c.w);
        let (y0, y1, fy) = pos(dy, d.h, c.h);
        let p = |x: u32, y: u32| f64::from(src[((c.y + y) * stride + c.x + x) as usize]);
        let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
        let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// Scales `source`'s crop onto a canvas and checks every plane against
    /// [`scaled_f64`] within ±1.
    fn check_against_f64(source: Picture, crop: Rect, dst_w: u32, dst_h: u32) {
        let source = Arc::new(source);
        let dst = Rect::new(0, 0, dst_w, dst_h);
        let scene = Scene {
            width: dst_w,
            height: dst_h,
            layers: vec![picture_layer(&source, crop, dst, 255)],
        };
        let out = compose_one(&scene, Picture::filled(2, 2, Yuv::BLACK));
        for plane in Plane::ALL {
            let c = plane_crop(crop, source.width, source.height, plane);
            let d = plane_rect(dst, plane);
            let (stride, _) = plane.size(source.width, source.height);
            for dy in 0..d.h {
                for dx in 0..d.w {
                    let want = scaled_f64(source.plane(plane), stride, c, d, dx, dy);
                    let got = f64::from(out.plane(plane)[(dy * d.w + dx) as usize]);
                    assert!(
                        (got - want).abs() <= 1.0,
                        "{plane:?} ({dx}, {dy}): {got} vs {want:.2}"
                    );
                }
            }
        }
    }

    fn gradient(width: u32, height: u32) -> Picture {
        pattern(width, height, |x, y| (16 + 3 * x + 2 * y).min(240) as u8)
    }

    #[test]
    fn fill_paints_each_plane() {
        let scene = Scene {
            width: 8,
            height: 6,
            layers: vec![
                fill(Rect::new(0, 0, 8, 6), 50, 60, 70),
                fill(Rect::new(2, 2, 4, 2), 1, 2, 3),
            ],
        };
        let out = compose_one(&scene, Picture::filled(8, 6, Yuv::BLACK));
        let row = |p: &[u8], w: usize, y: usize| p[y * w..(y + 1) * w].to_vec();
        assert_eq!(row(&out.y, 8, 1), vec![50; 8]);
        assert_eq!(row(&out.y, 8, 2), vec![50, 50, 1, 1, 1, 1, 50, 50]);
        assert_eq!(row(&out.u, 4, 1), vec![60, 2, 2, 60]);
        assert_eq!(row(&out.v, 4, 0), vec![70; 4]);
        assert_eq!(row(&out.v, 4, 1), vec![70, 3, 3, 70]);
    }

    #[test]
    fn unscaled_layer_copies_exactly() {
        let mut rng = Rng::new(1);
        let source = Arc::new(random_picture(&mut rng, 40, 30, false));
        let crop = Rect::new(6, 4, 20, 16);
        let scene = Scene {
            width: 64,
            height: 48,
            layers: vec![picture_layer(&source, crop, Rect::new(10, 8, 20, 16), 255)],
        };
        let out = compose_one(&scene, Picture::filled(64, 48, Yuv::BLACK));
        for plane in Plane::ALL {
            let s = plane.shift();
            let (sw, _) = plane.size(40, 30);
            let (ow, _) = plane.size(64, 48);
            for y in 0..16 >> s {
                for x in 0..20 >> s {
                    let want = source.plane(plane)[(((4 >> s) + y) * sw + (6 >> s) + x) as usize];
                    let got = out.plane(plane)[(((8 >> s) + y) * ow + (10 >> s) + x) as usize];
                    assert_eq!(got, want, "{plane:?} ({x}, {y})");
                }
            }
        }
        // Outside the layer the canvas is untouched.
        assert_eq!(out.y[0], Yuv::BLACK.y);
        assert_eq!(out.y[(47 * 64 + 63) as usize], Yuv::BLACK.y);
    }

    #[test]
    fn upscale_by_two_is_within_one_of_exact_bilinear() {
        check_against_f64(gradient(32, 18), Rect::new(0, 0, 32, 18), 64, 36);
    }

    #[test]
    fn downscale_by_two_is_within_one_of_exact_bilinear() {
        check_against_f64(gradient(64, 36), Rect::new(0, 0, 64, 36), 32, 18);
    }

    #[test]
    fn uneven_scales_and_crops_are_within_one_of_exact_bilinear() {
        let smooth = pattern(90, 50, |x, y| {
            (128.0 + 100.0 * (f64::from(x) / 9.0).sin() * (f64::from(y) / 7.0).cos()) as u8
        });
        check_against_f64(smooth.clone(), Rect::new(10, 6, 62, 30), 100, 22);
        check_against_f64(smooth, Rect::new(0, 0, 90, 50), 34, 98);
    }

    #[test]
    fn crop_selects_the_source_region() {
        // Quadrants of different values; showing only the bottom-right one
        // must give only its value.
        let source = Arc::new(pattern(
            16,
            16,
            |x, y| if x >= 8 && y >= 8 { 200 } else { 20 },
        ));
        let scene = Scene {
            width: 30,
            height: 10,
            layers: vec![picture_layer(
                &source,
                Rect::new(8, 8, 8, 8),
                Rect::new(0, 0, 30, 10),
                255,
            )],
        };
        let out = compose_one(&scene, Picture::filled(30, 10, Yuv::BLACK));
        assert!(out.y.iter().chain(&out.u).chain(&out.v).all(|&p| p == 200));
    }

    #[test]
    fn alpha_and_opacity_blend_with_the_spec_rounding() {
        let mut source = Picture::filled(
            4,
            4,
            Yuv {
                y: 200,
                u: 200,
                v: 200,
            },
        );
        source.alpha = Some([vec![128; 16], vec![128; 4]]);
        let with_alpha = Arc::new(source.clone());
        source.alpha = None;
        let opaque = Arc::new(source);
        let full = Rect::new(0, 0, 4, 4);
        let y_over_100 = |layer: Layer| {
            let scene = Scene {
                width: 4,
                height: 4,
                layers: vec![fill(full, 100, 100, 100), layer],
            };
            let out = compose_one(&scene, Picture::filled(4, 4, Yuv::BLACK));
            assert!(out.y.iter().chain(&out.v).all(|&p| p == out.y[0]));
            out.y[0]
        };
        // a = 128: (200·128 + 100·127 + 127) / 255 = 150.
        assert_eq!(y_over_100(picture_layer(&with_alpha, full, full, 255)), 150);
        assert_eq!(y_over_100(picture_layer(&opaque, full, full, 128)), 150);
        // a = (128·128 + 127) / 255 = 64: (200·64 + 100·191 + 127) / 255 = 125.
        assert_eq!(y_over_100(picture_layer(&with_alpha, full, full, 128)), 125);
        assert_eq!(y_over_100(picture_layer(&opaque, full, full, 0)), 100);
        assert_eq!(y_over_100(picture_layer(&opaque, full, full, 255)), 200);
        // The scaled path blends the same way.
        let big = Rect::new(0, 0, 4, 4);
        let scene = Scene {
            width: 8,
            height: 8,
            layers: vec![
                fill(Rect::new(0, 0, 8, 8), 100, 100, 100),
                picture_layer(&with_alpha, big, Rect::new(0, 0, 8, 8), 128),
            ],
        };
        let out = compose_one(&scene, Picture::filled(8, 8, Yuv::BLACK));
        assert!(out.y.iter().chain(&out.u).all(|&p| p == 125));
    }

    #[test]
    fn odd_sources_are_shown_whole() {
        let source = pattern(5, 3, |x, y| (40 * x + 10 * y) as u8);
        // Luma crop 5×3 scaled to 10×6, chroma 3×2 copied 1:1 onto 5×3...
        check_against_f64(source.clone(), Rect::new(0, 0, 6, 4), 10, 6);
        // ...and unscaled on a canvas of its own (rounded up) size: the luma
        // is a 5→6 upscale, the chroma a copy.
        let source = Arc::new(source);
        let scene = Scene {
            width: 6,
            height: 4,
            layers: vec![picture_layer(
                &source,
                Rect::new(0, 0, 6, 4),
                Rect::new(0, 0, 6, 4),
                255,
            )],
        };
        let out = compose_one(&scene, Picture::filled(6, 4, Yuv::BLACK));
        assert_eq!((&out.u, &out.v), (&source.u, &source.v));
        assert_eq!(out.y[0], source.y[0]);
        assert_eq!(out.y[5], source.y[4]);
    }

    #[test]
    fn later_layers_cover_earlier_ones() {
        let scene = Scene {
            width: 4,
            height: 2,
            layers: vec![
                fill(Rect::new(0, 0, 4, 2), 10, 10, 10),
                fill(Rect::new(0, 0, 2, 2), 20, 20, 20),
                fill(Rect::new(0, 0, 4, 2), 30, 30, 30),
                fill(Rect::new(2, 0, 2, 2), 40, 40, 40),
            ],
        };
        let out = compose_one(&scene, Picture::filled(4, 2, Yuv::BLACK));
        assert_eq!(out.y, vec![30, 30, 40, 40, 30, 30, 40, 40]);
        assert_eq!(out.u, vec![30, 40]);
    }

    #[test]
    fn empty_layers_paint_nothing() {
        let source = Arc::new(Picture::filled(
            4,
            4,
            Yuv {
                y: 99,
                u: 99,
                v: 99,
            },
        ));
        let scene = Scene {
            width: 4,
            height: 4,
            layers: vec![
                fill(Rect::new(0, 0, 0, 4), 1, 1, 1),
                picture_layer(&source, Rect::new(0, 0, 0, 0), Rect::new(0, 0, 4, 4), 255),
                picture_layer(&source, Rect::new(0, 0, 4, 4), Rect::new(2, 2, 2, 0), 255),
            ],
        };
        let out = compose_one(&scene, Picture::filled(4, 4, Yuv::BLACK));
        assert_eq!(out, Picture::filled(4, 4, Yuv::BLACK));
    }

    #[test]
    fn outputs_become_canvases_of_the_scene_size() {
        let scene = Scene {
            width: 8,
            height: 6,
            layers: vec![fill(Rect::new(0, 0, 2, 2), 77, 77, 77)],
        };
        // A wrong-sized output becomes black around the layer...
        let mut small = Picture::filled(2, 2, Yuv { y: 1, u: 1, v: 1 });
        small.alpha = Some([vec![0; 4], vec![0; 1]]);
        let out = compose_one(&scene, small);
        assert_eq!(
            (out.width, out.height, out.y.len(), out.u.len()),
            (8, 6, 48, 12)
        );
        assert_eq!(
            (out.y[0], out.y[2], out.u[1], out.alpha),
            (77, Yuv::BLACK.y, Yuv::BLACK.u, None)
        );
        // ...a right-sized one keeps its pixels there.
        let keep = Picture::filled(8, 6, Yuv { y: 5, u: 6, v: 7 });
        let out = compose_one(&scene, keep);
        assert_eq!((out.y[0], out.y[2], out.u[1], out.v[11]), (77, 5, 6, 7));
    }

    #[test]
    fn invalid_scenes_are_refused() {
        let source = Arc::new(Picture::filled(5, 5, Yuv::BLACK));
        let scene = |layers: Vec<Layer>| Scene {
            width: 8,
            height: 8,
            layers,
        };
        let full = Rect::new(0, 0, 8, 8);
        type Expect = fn(&SceneError) -> bool;
        let cases: Vec<(Scene, Expect)> = vec![
            (scene(vec![fill(Rect::new(1, 0, 2, 2), 0, 0, 0)]), |e| {
                matches!(e, SceneError::OddRect { what: "dst", .. })
            }),
            (scene(vec![fill(Rect::new(0, 0, 2, 3), 0, 0, 0)]), |e| {
                matches!(e, SceneError::OddRect { .. })
            }),
            (scene(vec![fill(Rect::new(6, 0, 4, 2), 0, 0, 0)]), |e| {
                matches!(e, SceneError::DstOutsideCanvas { .. })
            }),
            (
                scene(vec![fill(Rect::new(u32::MAX - 1, 0, 4, 2), 0, 0, 0)]),
                |e| matches!(e, SceneError::DstOutsideCanvas { .. }),
            ),
            (
                scene(vec![picture_layer(
                    &source,
                    Rect::new(0, 0, 8, 2),
                    full,
                    255,
                )]),
                |e| matches!(e, SceneError::CropOutsideSource { .. }),
            ),
            (
                scene(vec![picture_layer(
                    &source,
                    Rect::new(0, 1, 2, 2),
                    full,
                    255,
                )]),
                |e| matches!(e, SceneError::OddRect { what: "crop", .. }),
            ),
            (
                Scene {
                    width: 0,
                    height: 8,
                    layers: vec![],
                },
                |e| matches!(e, SceneError::CanvasSize { .. }),
            ),
            (
                Scene {
                    width: 8,
                    height: 4098,
                    layers: vec![],
                },
                |e| matches!(e, SceneError::CanvasSize { .. }),
            ),
        ];
        for (scene, expected) in cases {
            let err = scene.validate().expect_err("invalid");
            assert!(expected(&err), "{err}");
        }
        let huge = Arc::new(Picture::filled(4098, 2, Yuv::BLACK));
        let err = scene(vec![picture_layer(&huge, Rect::new(0, 0, 2, 2), full, 255)]).validate();
        assert!(
            matches!(err, Err(SceneError::SourceTooLarge { .. })),
            "{err:?}"
        );
        let mut broken = Picture::filled(4, 4, Yuv::BLACK);
        broken.u.pop();
        let err = scene(vec![picture_layer(
            &Arc::new(broken),
            Rect::new(0, 0, 2, 2),
            full,
            255,
        )])
        .validate();
        assert!(
            matches!(err, Err(SceneError::SourcePlanes { .. })),
            "{err:?}"
        );
        // The whole (rounded-up) odd source is a valid crop.
        assert!(scene(vec![picture_layer(
            &source,
            Rect::new(0, 0, 6, 6),
            full,
            255
        )])
        .validate()
        .is_ok());

        let mut cpu = CpuCompositor::new();
        let bad = scene(vec![fill(Rect::new(1, 0, 2, 2), 0, 0, 0)]);
        let good = scene(vec![]);
        let mut outputs = vec![
            Picture::filled(8, 8, Yuv::BLACK),
            Picture::filled(8, 8, Yuv::BLACK),
        ];
        let err = cpu.compose(&[good.clone(), bad], &mut outputs);
        assert!(
            matches!(err, Err(ComposeError::InvalidScene { index: 1, .. })),
            "{err:?}"
        );
        let err = cpu.compose(&[good], &mut outputs);
        assert!(
            matches!(err, Err(ComposeError::BatchMismatch(1, 2))),
            "{err:?}"
        );
    }

    #[test]
    fn random_scenes_match_the_per_pixel_spec() {
        let mut rng = Rng::new(7);
        let pool = source_pool(&mut rng);
        let mut cpu = CpuCompositor::new();
        for round in 0..60 {
            let (w, h) = (1 + rng.upto(150), 1 + rng.upto(100));
            let scene = random_scene(&mut rng, w, h, &pool);
            let start = random_picture(&mut rng, w, h, false);
            let mut want = start.clone();
            reference_compose(&scene, &mut want);
            let mut got = [start];
            cpu.compose(std::slice::from_ref(&scene), &mut got)
                .expect("compose");
            assert_eq!(
                first_difference(&got[0], &want),
                None,
                "round {round}: {scene:?}"
            );
        }
    }
}
