//! The CPU compositor: the reference implementation of [`crate::spec`] and
//! the fallback on machines without a GPU.
//!
//! Scaling is done separably with exactly the spec's result: for each
//! destination row the two source rows are first mixed vertically over the
//! crop's width (contiguous, in `u16` lanes, so it vectorises), unrounded,
//! then each destination pixel mixes two of those values horizontally and
//! rounds once. The unrounded four-term sum is the same in either order, so
//! this equals the spec's horizontal-then-vertical formula exactly. A row
//! whose vertical weight is 0 (its source row as is) skips the vertical mix:
//! the horizontal mix reads the source row itself ([`Sample`] for `u8`).
//!
//! The horizontal mix is where the time goes (a gather per pixel), so its
//! taps are precomputed per geometry and kept between frames ([`AxisCache`]),
//! and scalings by a small ratio (640 → 384 is 5 : 3) use a kernel whose
//! tap pattern is a compile-time constant ([`Ratio`]): no tap table loads,
//! no bounds checks, constant multipliers, about twice as fast as the
//! table. Such a kernel is only chosen after checking that it reproduces
//! the spec's taps where it reads them. The rounding constant is folded
//! into the vertical mix ([`mix_rows`]), which leaves one multiplication
//! per pixel in the horizontal one ([`Sample`]).
//!
//! Other fast paths: a fill is a slice fill and skips what later opaque
//! layers paint over ([`Cover`]), an unscaled layer reads its source
//! directly, and an opaque layer skips the blend. Scratch buffers are kept
//! between calls, so composing allocates nothing in steady state.

use crate::spec::{blend, effective_alpha, plane_crop, plane_rect, tap, Plane, Tap};
use crate::{validate_batch, ComposeError, Compositor, Layer, Picture, Rect, Scene};

/// Composes on the calling thread. See the module doc.
#[derive(Debug, Default)]
pub struct CpuCompositor {
    axes: AxisCache,
    buffers: RowBuffers,
    cover: Cover,
}

/// Rows of the layer being drawn.
#[derive(Debug, Default)]
struct RowBuffers {
    /// The current output row's two source rows mixed vertically (samples
    /// and alpha), before the horizontal mix.
    mixed: Vec<u16>,
    mixed_alpha: Vec<u16>,
    /// A blended layer's scaled row (samples and alpha) before blending.
    values: Vec<u8>,
    alphas: Vec<u8>,
}

impl CpuCompositor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Paints one scene onto `output` (already a canvas of the scene's size).
    fn paint(&mut self, scene: &Scene, output: &mut Picture) {
        for (index, layer) in scene.layers.iter().enumerate() {
            if layer.is_empty() {
                continue;
            }
            let visible = match layer {
                Layer::Fill { dst, .. } => self.cover.visible(*dst, &scene.layers[index + 1..]),
                Layer::Picture { .. } => &[],
            };
            for plane in Plane::ALL {
                let (canvas_w, _) = plane.size(scene.width, scene.height);
                let mut canvas = Canvas {
                    pixels: output.plane_mut(plane),
                    stride: canvas_w as usize,
                };
                match layer {
                    Layer::Fill { color, .. } => {
                        for part in visible {
                            fill(
                                &mut canvas,
                                plane_rect(*part, plane),
                                color.component(plane),
                            );
                        }
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
                        draw(&mut canvas, &layer, &mut self.axes, &mut self.buffers);
                    }
                }
            }
        }
    }
}

fn draw(canvas: &mut Canvas<'_>, layer: &PlaneLayer<'_>, axes: &mut AxisCache, b: &mut RowBuffers) {
    let (crop, dst) = (layer.crop, layer.dst);
    if crop.is_empty() || dst.is_empty() {
        return;
    }
    if crop.w == dst.w && crop.h == dst.h {
        draw_unscaled(canvas, layer);
        return;
    }
    let (columns, rows) = axes.pair((dst.w, crop.w), (dst.h, crop.h));
    let source = Rows {
        plane: layer.source,
        stride: layer.stride,
        crop,
    };
    let constant_alpha = effective_alpha(255, layer.opacity);
    let width = dst.w as usize;
    b.values.resize(width, 0);
    b.alphas.resize(width, 0);
    for (y, &ty) in (dst.y..).zip(&rows.taps) {
        let out = canvas.row(y, dst.x, dst.w);
        match layer.alpha {
            None if constant_alpha == 255 => source.scale(ty, columns, &mut b.mixed, out),
            None => {
                source.scale(ty, columns, &mut b.mixed, &mut b.values);
                for (o, &v) in out.iter_mut().zip(&b.values) {
                    *o = blend(v, *o, constant_alpha);
                }
            }
            Some(alpha) => {
                source.scale(ty, columns, &mut b.mixed, &mut b.values);
                let alpha = Rows {
                    plane: alpha,
                    ..source
                };
                alpha.scale(ty, columns, &mut b.mixed_alpha, &mut b.alphas);
                for ((o, &v), &a) in out.iter_mut().zip(&b.values).zip(&b.alphas) {
                    *o = blend(v, *o, effective_alpha(a, layer.opacity));
                }
            }
        }
    }
}

/// The crop of one source (or alpha) plane, row by row.
#[derive(Clone, Copy)]
struct Rows<'a> {
    plane: &'a [u8],
    stride: usize,
    crop: Rect,
}

impl Rows<'_> {
    /// Row `y` of the crop (relative to its top), its crop columns only.
    fn row(&self, y: u32) -> &[u8] {
        let start = (self.crop.y + y) as usize * self.stride + self.crop.x as usize;
        &self.plane[start..start + self.crop.w as usize]
    }

    /// One output row: the rows of `ty` (relative to the crop) mixed
    /// vertically into `mixed`, then horizontally with `columns` into
    /// `out`. With weight 0 the vertical mix would only multiply the first
    /// row by 256, so the columns are mixed from that row directly.
    fn scale(&self, ty: Tap, columns: &Axis, mixed: &mut Vec<u16>, out: &mut [u8]) {
        if ty.weight == 0 {
            (columns.narrow)(self.row(ty.i0), &columns.taps, out);
        } else {
            mix_rows(mixed, self.row(ty.i0), self.row(ty.i1), ty.weight);
            (columns.wide)(mixed, &columns.taps, out);
        }
    }
}

/// The vertical half of the bilinear mix: `spec::mix_unrounded` of each
/// column of `top` and `bottom`, plus 128, the final rounding's 32768
/// divided by the horizontal weights' 256, added here once per column
/// instead of once per output pixel (see `Sample for u16`). In `u16`, which
/// doubles the lanes per vector over `u32`: the sum is at most
/// 255 · 256 + 128 = 65,408, so computing it as `256·t + w·(b − t) + 128`
/// (one vector multiplication instead of two) with wrapping arithmetic,
/// modulo 2¹⁶, gives it exactly.
fn mix_rows(mixed: &mut Vec<u16>, top: &[u8], bottom: &[u8], weight: u32) {
    let w = weight as u16;
    mixed.resize(top.len(), 0);
    for ((m, &t), &b) in mixed.iter_mut().zip(top).zip(bottom) {
        let (t, b) = (u16::from(t), u16::from(b));
        *m = (t << 8)
            .wrapping_add(b.wrapping_sub(t).wrapping_mul(w))
            .wrapping_add(128);
    }
}

/// What the horizontal mix reads: vertically mixed values from
/// [`mix_rows`] (`u16`), or the samples of one source row when the
/// vertical weight is 0 (`u8`).
trait Sample: Copy {
    /// `spec::mix_and_round` of two columns of this kind with horizontal
    /// weight `weight`.
    fn mix(a: Self, b: Self, weight: u32) -> u8;
    /// The same with weight 0.
    fn unweighted(a: Self) -> u8;
}

impl Sample for u16 {
    /// With `a = A + 128` and `b = B + 128` ([`mix_rows`]), the spec's
    /// `A·(256 − w) + B·w + 32768` is `256·a + w·(b − a)`: one
    /// multiplication and no rounding constant per pixel, which takes about
    /// a third off the row kernels' time. In `i32`, where every term is
    /// below 2²⁵ in magnitude and the sum is not negative.
    #[inline(always)]
    fn mix(a: u16, b: u16, weight: u32) -> u8 {
        let (a, b) = (i32::from(a), i32::from(b));
        (((a << 8) + (b - a) * weight as i32) >> 16) as u8
    }

    /// `(256·a) >> 16`.
    #[inline(always)]
    fn unweighted(a: u16) -> u8 {
        (a >> 8) as u8
    }
}

impl Sample for u8 {
    /// The spec's values would be `A = 256·a` and `B = 256·b`, and
    /// `(256·x + 32768) >> 16 = (x + 128) >> 8`; the sum is written as for
    /// `u16`, with the rounding constant here.
    #[inline(always)]
    fn mix(a: u8, b: u8, weight: u32) -> u8 {
        let (a, b) = (i32::from(a), i32::from(b));
        (((a << 8) + (b - a) * weight as i32 + 128) >> 8) as u8
    }

    #[inline(always)]
    fn unweighted(a: u8) -> u8 {
        a
    }
}

/// Mixes one row horizontally: `samples` are the crop's columns, `taps`
/// the axis's taps (relative to the crop), `out` the destination row.
type RowKernel<T> = fn(&[T], &[Tap], &mut [u8]);

/// Any taps, read from the table.
fn by_table<T: Sample>(samples: &[T], taps: &[Tap], out: &mut [u8]) {
    for (o, t) in out.iter_mut().zip(taps) {
        *o = T::mix(samples[t.i0 as usize], samples[t.i1 as usize], t.weight);
    }
}

/// Crop and destination of the same length: column `x` is sample `x` with
/// weight 0 (contiguous, so it vectorises).
fn same_length<T: Sample>(samples: &[T], _: &[Tap], out: &mut [u8]) {
    for (o, &s) in out.iter_mut().zip(samples) {
        *o = T::unweighted(s);
    }
}

/// A scaling by `S / P` in lowest terms: `P` outputs show `S` samples. The
/// spec's position of output `x`, before its clamps, is
/// `(2x + 1) · S · 128 / P − 128` (the lengths only enter through their
/// ratio), which grows by exactly `256 · S` every `P` outputs. So output
/// `k·P + j` reads `window[phases[j].0]` and the sample after it with
/// weight `phases[j].1`, where `window` is the `window` samples from
/// `k·S − before` ([`Layout`]): all constants. That holds wherever the
/// window lies inside the row ([`middle`]), which is everywhere for a
/// downscale, and for an upscale everywhere but in the first and the last
/// period (which reach the clamps, and are mixed from the table instead).
struct Ratio<const P: usize, const S: usize>;

impl<const P: usize, const S: usize> Ratio<P, S> {
    const LAYOUT: Layout<P> = layout::<P>(S);

    fn scale<T: Sample>(samples: &[T], taps: &[Tap], out: &mut [u8]) {
        let Layout {
            before,
            window,
            ref phases,
        } = Self::LAYOUT;
        let (lo, hi) = middle(samples.len(), out.len() / P, S, before, window);
        let (head, rest) = out.split_at_mut(lo * P);
        let (body, tail) = rest.split_at_mut((hi - lo) * P);
        by_table(samples, &taps[..lo * P], head);
        by_table(samples, &taps[hi * P..], tail);
        let windows = samples[lo * S - before..].windows(window).step_by(S);
        for (window, out) in windows.zip(body.chunks_exact_mut(P)) {
            for (o, &(i, weight)) in out.iter_mut().zip(phases) {
                *o = T::mix(window[i], window[i + 1], weight);
            }
        }
    }
}

/// Where the phases of a [`Ratio`] read.
struct Layout<const P: usize> {
    /// How far a period's window starts before its first sample `k·S`: 1
    /// when a phase reads the previous period's last sample (upscales),
    /// else 0.
    before: usize,
    window: usize,
    /// Per phase: the first sample, in the window, and the weight.
    phases: [(usize, u32); P],
}

const fn layout<const P: usize>(s: usize) -> Layout<P> {
    let mut first = [0i32; P];
    let mut weights = [0u32; P];
    let (mut before, mut last) = (0, 0);
    let mut j = 0;
    while j < P {
        let fixed = ((2 * j + 1) * s * 128 / P) as i32 - 128;
        first[j] = fixed.div_euclid(256);
        weights[j] = fixed.rem_euclid(256) as u32;
        // `fixed` is at least −128, so a phase starts at most one sample
        // before its period.
        if first[j] < 0 {
            before = 1;
        }
        if first[j] + 1 > last {
            last = first[j] + 1;
        }
        j += 1;
    }
    let mut phases = [(0, 0); P];
    let mut j = 0;
    while j < P {
        phases[j] = ((first[j] + before as i32) as usize, weights[j]);
        j += 1;
    }
    Layout {
        before,
        window: (last + before as i32 + 1) as usize,
        phases,
    }
}

/// The periods `lo..hi` (of `periods`) whose windows lie inside a row of
/// `len` samples.
fn middle(len: usize, periods: usize, s: usize, before: usize, window: usize) -> (usize, usize) {
    let lo = before.min(periods);
    let hi = (len + before)
        .checked_sub(window)
        .map_or(0, |room| room / s + 1)
        .min(periods);
    (lo, hi.max(lo))
}

/// A [`Ratio`]'s kernels and layout, as values.
struct Periodic {
    p: u32,
    s: u32,
    before: usize,
    window: usize,
    phases: &'static [(usize, u32)],
    wide: RowKernel<u16>,
    narrow: RowKernel<u8>,
}

macro_rules! periodic_kernels {
    ($($p:literal: $($s:literal)*;)*) => {
        /// The compiled ratios: `P` up to 4 and `S` up to 16, in lowest
        /// terms, covering the grid tiles of common canvases and sources
        /// (5:3 is 640×360 into a 5×5 grid of 1920×1080; 2:1, 4:3, 5:1,
        /// 10:3, 15:2; upscales 1:2, 2:3, 1:3...).
        const PERIODIC: &[Periodic] = &[$($(Periodic {
            p: $p,
            s: $s,
            before: Ratio::<$p, $s>::LAYOUT.before,
            window: Ratio::<$p, $s>::LAYOUT.window,
            phases: &Ratio::<$p, $s>::LAYOUT.phases,
            wide: Ratio::<$p, $s>::scale::<u16>,
            narrow: Ratio::<$p, $s>::scale::<u8>,
        },)*)*];
    };
}

periodic_kernels! {
    1: 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16;
    2: 1 3 5 7 9 11 13 15;
    3: 1 2 4 5 7 8 10 11 13 14 16;
    4: 1 3 5 7 9 11 13 15;
}

/// Which kernel an [`Axis`] uses for its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    SameLength,
    Periodic { p: u32, s: u32 },
    Table,
}

/// The taps of one scaling (a destination length showing a crop length),
/// relative to the crop start, and the row kernels that apply them.
#[derive(Debug)]
struct Axis {
    dst_len: u32,
    crop_len: u32,
    taps: Vec<Tap>,
    kernel: Kernel,
    wide: RowKernel<u16>,
    narrow: RowKernel<u8>,
}

impl Axis {
    fn new(dst_len: u32, crop_len: u32) -> Self {
        let mut axis = Axis {
            dst_len,
            crop_len,
            taps: Vec::new(),
            kernel: Kernel::Table,
            wide: by_table,
            narrow: by_table,
        };
        axis.compute(dst_len, crop_len);
        axis
    }

    /// Recomputes the axis for a new geometry, reusing the table's memory.
    fn compute(&mut self, dst_len: u32, crop_len: u32) {
        self.dst_len = dst_len;
        self.crop_len = crop_len;
        self.taps.clear();
        self.taps
            .extend((0..dst_len).map(|i| tap(i, dst_len, 0, crop_len)));
        (self.kernel, self.wide, self.narrow) = self.choose_kernel();
    }

    fn choose_kernel(&self) -> (Kernel, RowKernel<u16>, RowKernel<u8>) {
        let taps = &self.taps;
        if self.dst_len == self.crop_len && (0..).zip(taps).all(|(x, t)| t.i0 == x && t.weight == 0)
        {
            return (Kernel::SameLength, same_length, same_length);
        }
        let g = gcd(self.dst_len, self.crop_len);
        let (p, s) = (self.dst_len / g, self.crop_len / g);
        let found = PERIODIC.iter().find(|k| (k.p, k.s) == (p, s));
        if let Some(k) = found {
            // The kernel reads exactly these taps in the middle periods
            // (and the table elsewhere); this check keeps it exact even if
            // the derivation in `Ratio` were wrong.
            let (lo, hi) = middle(
                self.crop_len as usize,
                (self.dst_len / p) as usize,
                s as usize,
                k.before,
                k.window,
            );
            let middle = lo * p as usize..hi * p as usize;
            let matches = (0..).zip(&taps[middle.clone()]).all(|(x, t)| {
                let x = x + middle.start as u32;
                let (period, phase) = (x / p, (x % p) as usize);
                let (first, weight) = k.phases[phase];
                let i0 = (period * s + first as u32).wrapping_sub(k.before as u32);
                *t == Tap {
                    i0,
                    i1: i0 + 1,
                    weight,
                }
            });
            if matches {
                return (Kernel::Periodic { p, s }, k.wide, k.narrow);
            }
        }
        (Kernel::Table, by_table, by_table)
    }
}

const fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Recently used [`Axis`]es: a layout draws the same few geometries (every
/// tile of a grid has the same) in every frame, so their taps and kernels
/// are computed once, not per layer, plane and frame.
#[derive(Debug, Default)]
struct AxisCache {
    axes: Vec<Axis>,
    /// The entry replaced next once the cache is full (round robin).
    next: usize,
}

/// Enough for the columns and rows of both plane sizes of eight layer
/// geometries; a lookup is a linear scan.
const CACHED_AXES: usize = 32;

impl AxisCache {
    /// The axes for `(dst_len, crop_len)` of the columns and of the rows.
    fn pair(&mut self, columns: (u32, u32), rows: (u32, u32)) -> (&Axis, &Axis) {
        let c = self.index(columns, usize::MAX);
        let r = self.index(rows, c);
        (&self.axes[c], &self.axes[r])
    }

    /// The index of the axis, computed into a free or the oldest entry
    /// (never `keep`) if it is not cached.
    fn index(&mut self, (dst_len, crop_len): (u32, u32), keep: usize) -> usize {
        if let Some(i) = self
            .axes
            .iter()
            .position(|a| (a.dst_len, a.crop_len) == (dst_len, crop_len))
        {
            return i;
        }
        if self.axes.len() < CACHED_AXES {
            self.axes.push(Axis::new(dst_len, crop_len));
            return self.axes.len() - 1;
        }
        if self.next == keep {
            self.next = (self.next + 1) % CACHED_AXES;
        }
        let i = self.next;
        self.next = (i + 1) % CACHED_AXES;
        self.axes[i].compute(dst_len, crop_len);
        i
    }
}

/// Finds the parts of a fill that no later opaque layer paints over: a
/// grid's background fill is usually covered entirely by its tiles, and
/// filling it anyway would write the whole canvas once more. Works in luma
/// coordinates, where every rectangle is even, so the parts map onto the
/// chroma planes exactly.
#[derive(Debug, Default)]
struct Cover {
    /// The later opaque layers' `dst`s, clipped to the fill.
    above: Vec<Rect>,
    /// The rows where one of them starts or ends: between two consecutive
    /// edges each covers either the whole band or none of it.
    edges: Vec<u32>,
    /// The column ranges covering the current band.
    spans: Vec<(u32, u32)>,
    visible: Vec<Rect>,
}

impl Cover {
    /// The parts of `dst` that none of the opaque layers in `later`
    /// covers, as rectangles. Small fills, and fills under very many
    /// layers (the search is quadratic in their number), are not
    /// searched: filling them whole is cheaper.
    fn visible(&mut self, dst: Rect, later: &[Layer]) -> &[Rect] {
        self.visible.clear();
        self.above.clear();
        if u64::from(dst.w) * u64::from(dst.h) >= MIN_SEARCHED_FILL {
            self.above.extend(
                later
                    .iter()
                    .filter(|l| l.is_opaque() && !l.is_empty())
                    .filter_map(|l| intersection(l.dst(), dst)),
            );
        }
        if self.above.is_empty() || self.above.len() > MAX_SEARCHED_LAYERS {
            self.visible.push(dst);
            return &self.visible;
        }
        self.edges.clear();
        self.edges.extend([dst.y, dst.y + dst.h]);
        for r in &self.above {
            self.edges.extend([r.y, r.y + r.h]);
        }
        self.edges.sort_unstable();
        self.edges.dedup();
        for band in self.edges.windows(2) {
            let (top, bottom) = (band[0], band[1]);
            self.spans.clear();
            self.spans.extend(
                self.above
                    .iter()
                    .filter(|r| r.y <= top && r.y + r.h >= bottom)
                    .map(|r| (r.x, r.x + r.w)),
            );
            self.spans.sort_unstable();
            let mut x = dst.x;
            for &(start, end) in &self.spans {
                if start > x {
                    self.visible
                        .push(Rect::new(x, top, start - x, bottom - top));
                }
                x = x.max(end);
            }
            if x < dst.x + dst.w {
                self.visible
                    .push(Rect::new(x, top, dst.x + dst.w - x, bottom - top));
            }
        }
        &self.visible
    }
}

/// The smallest fill, in luma pixels, worth a [`Cover`] search: searching
/// under a 5 × 5 grid takes about as long as filling 256 × 256 pixels
/// (half a microsecond), under 64 layers three times as long. Any size in
/// tests, so that their small random scenes exercise the search.
const MIN_SEARCHED_FILL: u64 = if cfg!(test) { 1 } else { 256 * 256 };
/// The most opaque layers a [`Cover`] search looks under.
const MAX_SEARCHED_LAYERS: usize = 64;

/// The overlap of two rectangles, if not empty.
fn intersection(a: Rect, b: Rect) -> Option<Rect> {
    let (x0, y0) = (a.x.max(b.x), a.y.max(b.y));
    let (x1, y1) = ((a.x + a.w).min(b.x + b.w), (a.y + a.h).min(b.y + b.h));
    (x0 < x1 && y0 < y1).then(|| Rect::new(x0, y0, x1 - x0, y1 - y0))
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

fn fill(canvas: &mut Canvas<'_>, dst: Rect, value: u8) {
    for y in dst.y..dst.y + dst.h {
        canvas.row(y, dst.x, dst.w).fill(value);
    }
}

/// A layer whose crop and dst have the same size: every tap has weight 0,
/// so the value is the source sample itself.
fn draw_unscaled(canvas: &mut Canvas<'_>, layer: &PlaneLayer<'_>) {
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

    /// Composes `scene` on both this compositor and the per-pixel
    /// reference, from the same random canvas, and asserts they are equal.
    fn assert_matches_reference(cpu: &mut CpuCompositor, rng: &mut Rng, scene: &Scene) {
        let start = random_picture(rng, scene.width, scene.height, false);
        let mut want = start.clone();
        reference_compose(scene, &mut want);
        let mut got = [start];
        cpu.compose(std::slice::from_ref(scene), &mut got)
            .expect("compose");
        assert_eq!(first_difference(&got[0], &want), None, "{scene:?}");
    }

    #[test]
    fn row_mixes_match_the_spec() {
        use crate::spec::{mix_and_round, mix_unrounded};
        let mut mixed = Vec::new();
        let all: Vec<u8> = (0..=255).collect();
        for w in 0..256 {
            for t in 0..=255 {
                mix_rows(&mut mixed, &[t; 256], &all, w);
                for (&m, &b) in mixed.iter().zip(&all) {
                    assert_eq!(u32::from(m), mix_unrounded(t, b, w) + 128);
                }
                // A weight-0 row read directly is the spec's 256·sample.
                for &b in &all {
                    let spec = mix_and_round(mix_unrounded(t, 0, 0), mix_unrounded(b, 0, 0), w);
                    assert_eq!(u8::mix(t, b, w), spec, "{t} {b} {w}");
                }
                assert_eq!(
                    u8::unweighted(t),
                    mix_and_round(mix_unrounded(t, 0, 0), 0, 0)
                );
            }
        }
        let mut rng = Rng::new(3);
        for _ in 0..1_000_000 {
            let (a, b, w) = (rng.upto(65280), rng.upto(65280), rng.upto(255));
            let (ma, mb) = ((a + 128) as u16, (b + 128) as u16);
            assert_eq!(u16::mix(ma, mb, w), mix_and_round(a, b, w), "{a} {b} {w}");
            assert_eq!(u16::unweighted(ma), mix_and_round(a, b, 0), "{a}");
        }
        for a in [0, 1, 127, 128, 65151, 65152, 65280] {
            for (b, w) in [(0, 255), (65280, 255), (65280, 1), (0, 1), (a, 128)] {
                let (ma, mb) = ((a + 128) as u16, (b + 128) as u16);
                assert_eq!(u16::mix(ma, mb, w), mix_and_round(a, b, w), "{a} {b} {w}");
            }
        }
    }

    #[test]
    fn kernels_are_chosen_by_ratio() {
        let kernel = |dst, crop| Axis::new(dst, crop).kernel;
        assert_eq!(kernel(384, 640), Kernel::Periodic { p: 3, s: 5 });
        assert_eq!(kernel(192, 320), Kernel::Periodic { p: 3, s: 5 });
        assert_eq!(kernel(216, 360), Kernel::Periodic { p: 3, s: 5 });
        assert_eq!(kernel(3, 48), Kernel::Periodic { p: 1, s: 16 });
        assert_eq!(kernel(640, 640), Kernel::SameLength);
        assert_eq!(kernel(1, 1), Kernel::SameLength);
        assert_eq!(kernel(960, 640), Kernel::Periodic { p: 3, s: 2 });
        assert_eq!(kernel(2, 1), Kernel::Periodic { p: 2, s: 1 });
        // Not compiled: periods of 5 and 213, a ratio beyond 16.
        assert_eq!(kernel(5, 6), Kernel::Table);
        assert_eq!(kernel(5, 4), Kernel::Table);
        assert_eq!(kernel(2, 34), Kernel::Table);
        assert_eq!(kernel(213, 320), Kernel::Table);
    }

    #[test]
    fn every_compiled_ratio_is_used_and_matches_the_spec() {
        let mut rng = Rng::new(11);
        let mut cpu = CpuCompositor::new();
        for k in PERIODIC {
            assert_eq!(
                phases_of(k),
                k.phases,
                "{}:{} phases are spec::tap",
                k.s,
                k.p
            );
            // `periods` per luma row; even so that the chroma planes have
            // the same ratio with half as many, and enough for an upscale
            // to have middle periods in both.
            for periods in [2, 8] {
                let (crop_len, dst_len) = (k.s * periods, k.p * periods);
                assert_eq!(
                    Axis::new(dst_len, crop_len).kernel,
                    Kernel::Periodic { p: k.p, s: k.s }
                );
                let chroma = middle(
                    (crop_len / 2) as usize,
                    (periods / 2) as usize,
                    k.s as usize,
                    k.before,
                    k.window,
                );
                assert!(periods < 8 || chroma.1 > chroma.0, "no middle periods");
                // The ratio horizontally, vertically, and both; opaque,
                // with opacity, and with alpha.
                for (alpha, opacity) in [(false, 255), (false, 100), (true, 255)] {
                    let source = Arc::new(random_picture(&mut rng, crop_len + 4, 40, alpha));
                    let scene = Scene {
                        width: dst_len + 6,
                        height: 40,
                        layers: vec![
                            picture_layer(
                                &source,
                                Rect::new(2, 0, crop_len, 40),
                                Rect::new(4, 0, dst_len, 40),
                                opacity,
                            ),
                            picture_layer(
                                &source,
                                Rect::new(2, 2, crop_len, 36),
                                Rect::new(0, 2, dst_len, 14),
                                opacity,
                            ),
                        ],
                    };
                    assert_matches_reference(&mut cpu, &mut rng, &scene);
                    let tall = Arc::new(random_picture(&mut rng, 30, crop_len + 2, alpha));
                    let scene = Scene {
                        width: 30,
                        height: dst_len + 2,
                        layers: vec![picture_layer(
                            &tall,
                            Rect::new(0, 2, 30, crop_len),
                            Rect::new(0, 2, 30, dst_len),
                            opacity,
                        )],
                    };
                    assert_matches_reference(&mut cpu, &mut rng, &scene);
                }
            }
        }
    }

    /// A [`Ratio`]'s phases from `spec::tap` itself, in a middle period of
    /// a row of 3.
    fn phases_of(k: &Periodic) -> Vec<(usize, u32)> {
        (0..k.p)
            .map(|j| {
                let t = tap(k.p + j, 3 * k.p, 0, 3 * k.s);
                assert_eq!(t.i1, t.i0 + 1);
                ((t.i0 + k.before as u32 - k.s) as usize, t.weight)
            })
            .collect()
    }

    #[test]
    fn the_tap_cache_keeps_both_axes_of_a_layer() {
        let mut cache = AxisCache::default();
        for n in 0..3 * CACHED_AXES as u32 {
            let (columns, rows) = cache.pair((2 + n, 1000 + n), (2 + n, 7));
            assert_eq!((columns.dst_len, columns.crop_len), (2 + n, 1000 + n));
            assert_eq!((rows.dst_len, rows.crop_len), (2 + n, 7));
            assert_eq!(
                columns.taps,
                (0..2 + n)
                    .map(|i| tap(i, 2 + n, 0, 1000 + n))
                    .collect::<Vec<_>>()
            );
            assert_eq!(
                rows.taps,
                (0..2 + n).map(|i| tap(i, 2 + n, 0, 7)).collect::<Vec<_>>()
            );
        }
        assert_eq!(cache.axes.len(), CACHED_AXES);
        // The same geometry twice is one entry.
        let mut cache = AxisCache::default();
        let _ = cache.pair((10, 20), (10, 20));
        assert_eq!(cache.axes.len(), 1);
    }

    #[test]
    fn fills_skip_only_what_opaque_layers_above_cover() {
        let mut cover = Cover::default();
        let opaque = Arc::new(Picture::filled(4, 4, Yuv::BLACK));
        let mut translucent = Picture::filled(4, 4, Yuv::BLACK);
        translucent.alpha = Some([vec![255; 16], vec![255; 4]]);
        let translucent = Arc::new(translucent);
        let full = Rect::new(0, 0, 4, 4);
        let tile = |source: &Arc<Picture>, dst: Rect, opacity: u8| {
            picture_layer(source, full, dst, opacity)
        };
        let canvas = Rect::new(0, 0, 20, 10);
        // A grid covering everything: nothing left to fill.
        let grid: Vec<Layer> = (0..4)
            .map(|i| {
                tile(
                    &opaque,
                    Rect::new(10 * (i % 2), 6 * (i / 2), 10, 6 - 2 * (i / 2)),
                    255,
                )
            })
            .collect();
        assert_eq!(cover.visible(canvas, &grid), &[] as &[Rect]);
        // Translucent, alpha and empty layers cover nothing; partial
        // overlaps leave the rest.
        let layers = vec![
            tile(&opaque, Rect::new(4, 2, 8, 4), 254),
            tile(&translucent, Rect::new(4, 2, 8, 4), 255),
            tile(&opaque, Rect::new(4, 2, 0, 4), 255),
            fill(Rect::new(16, 0, 4, 4), 1, 2, 3),
            tile(&opaque, Rect::new(0, 8, 6, 2), 255),
        ];
        let mut parts = cover.visible(Rect::new(2, 0, 16, 10), &layers).to_vec();
        parts.sort_by_key(|r| (r.y, r.x));
        assert_eq!(
            parts,
            vec![
                Rect::new(2, 0, 14, 4),
                Rect::new(2, 4, 16, 4),
                Rect::new(6, 8, 12, 2),
            ]
        );
        // Composed, the skipped parts make no difference.
        let mut rng = Rng::new(5);
        let mut cpu = CpuCompositor::new();
        for layers in [grid, layers] {
            let mut all = vec![fill(canvas, 9, 8, 7)];
            all.extend(layers);
            let scene = Scene {
                width: 20,
                height: 10,
                layers: all,
            };
            assert_matches_reference(&mut cpu, &mut rng, &scene);
        }
    }
}
