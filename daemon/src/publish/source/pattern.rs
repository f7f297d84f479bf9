//! The test picture: an I420 canvas allocated once per source and repainted
//! in place for each media time.
//!
//! Everything that moves is a pure function of the media time, never of the
//! frame count: a viewer (or a test) comparing two frames sees how much media
//! time passed between them, so dropped or duplicated frames show up as jumps
//! or freezes instead of being hidden.
//!
//! Layout (both patterns): a black plate in the top-left corner with the
//! label on the first line, the `HH:MM:SS.mmm` clock on the second and a
//! marker sliding along a track underneath once per second. The plate is kept
//! small so that with [`Pattern::Solid`] most of the frame, and in particular
//! its centre, is exactly the configured colour.

use std::io::Write as _;
use std::time::Duration;

use super::font::{self, ADVANCE, GLYPH_H, GLYPH_W};
use super::{Pattern, Rgb, Yuv};

/// 75% colour bars (white, yellow, cyan, green, magenta, red, blue), the
/// classic order, so the picture is recognisable as a test signal.
const BARS: [Rgb; 7] = [
    Rgb(191, 191, 191),
    Rgb(191, 191, 0),
    Rgb(0, 191, 191),
    Rgb(0, 191, 0),
    Rgb(191, 0, 191),
    Rgb(191, 0, 0),
    Rgb(0, 0, 191),
];
/// The bars scroll one full frame width in this time.
const BAR_PERIOD_MS: u64 = 4000;
/// The bouncing box crosses the frame and back in these times; different
/// periods for x and y make it wander over the whole picture.
const BOX_PERIOD_X_MS: u64 = 3000;
const BOX_PERIOD_Y_MS: u64 = 2200;
/// Clock text is always at least this long (`HH:MM:SS.mmm`); the plate is
/// sized for it so the clock never spills onto the background.
const CLOCK_CHARS: u32 = 12;

const BLACK: Yuv = Yuv {
    y: 16,
    u: 128,
    v: 128,
};
const WHITE: Yuv = Yuv {
    y: 235,
    u: 128,
    v: 128,
};

/// An I420 picture in one contiguous buffer: Y (w×h), then U and V (w/2×h/2
/// each), with strides equal to the widths. Dimensions are even (validated
/// by the config), which keeps the chroma planes exact.
pub(crate) struct I420 {
    width: u32,
    height: u32,
    buf: Vec<u8>,
}

impl I420 {
    fn new(width: u32, height: u32) -> Self {
        let luma = (width * height) as usize;
        Self {
            width,
            height,
            buf: vec![0; luma + luma / 2],
        }
    }

    pub(crate) fn width(&self) -> u32 {
        self.width
    }

    pub(crate) fn height(&self) -> u32 {
        self.height
    }

    pub(crate) fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let luma = (self.width * self.height) as usize;
        let (y, uv) = self.buf.split_at(luma);
        let (u, v) = uv.split_at(luma / 4);
        (y, u, v)
    }

    fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let luma = (self.width * self.height) as usize;
        let (y, uv) = self.buf.split_at_mut(luma);
        let (u, v) = uv.split_at_mut(luma / 4);
        (y, u, v)
    }

    /// Fills luma rows `y0..y1` and the matching chroma rows with `color`.
    /// Rows must be even (whole chroma rows) and within the frame.
    fn fill_rows(&mut self, y0: u32, y1: u32, color: Yuv) {
        let (w, cw) = (self.width as usize, (self.width / 2) as usize);
        let (yp, up, vp) = self.planes_mut();
        yp[y0 as usize * w..y1 as usize * w].fill(color.y);
        up[(y0 / 2) as usize * cw..(y1 / 2) as usize * cw].fill(color.u);
        vp[(y0 / 2) as usize * cw..(y1 / 2) as usize * cw].fill(color.v);
    }

    /// Fills a rectangle in all three planes, clipped to the frame. Corners
    /// are rounded down to even coordinates so luma and chroma cover exactly
    /// the same area and no half-coloured chroma fringe appears.
    fn fill_rect(&mut self, x: u32, y: u32, w: u32, h: u32, color: Yuv) {
        let x0 = (x & !1).min(self.width);
        let y0 = (y & !1).min(self.height);
        let x1 = (x.saturating_add(w) & !1).min(self.width);
        let y1 = (y.saturating_add(h) & !1).min(self.height);
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        let (stride, cstride) = (self.width as usize, (self.width / 2) as usize);
        let (yp, up, vp) = self.planes_mut();
        for row in y0..y1 {
            let start = row as usize * stride;
            yp[start + x0 as usize..start + x1 as usize].fill(color.y);
        }
        for row in y0 / 2..y1 / 2 {
            let start = row as usize * cstride;
            let span = start + (x0 / 2) as usize..start + (x1 / 2) as usize;
            up[span.clone()].fill(color.u);
            vp[span].fill(color.v);
        }
    }

    /// Fills a rectangle in the luma plane only, clipped to the frame. Used
    /// for white-on-black overlays, where chroma is neutral on both sides.
    fn fill_luma(&mut self, x: u32, y: u32, w: u32, h: u32, luma: u8) {
        let x1 = x.saturating_add(w).min(self.width);
        let y1 = y.saturating_add(h).min(self.height);
        if x >= x1 || y >= y1 {
            return;
        }
        let stride = self.width as usize;
        let (yp, _, _) = self.planes_mut();
        for row in y..y1 {
            let start = row as usize * stride;
            yp[start + x as usize..start + x1 as usize].fill(luma);
        }
    }

    /// Draws `text` in luma at (`x`, `y`) with each font pixel `scale`
    /// pixels square, clipped to the frame.
    fn draw_text(
        &mut self,
        x: u32,
        y: u32,
        scale: u32,
        text: impl Iterator<Item = char>,
        luma: u8,
    ) {
        let mut gx = x;
        for c in text {
            if gx >= self.width {
                break;
            }
            let glyph = font::glyph(c);
            for row in 0..GLYPH_H {
                for col in 0..GLYPH_W {
                    if font::ink(&glyph, col, row) {
                        self.fill_luma(gx + col * scale, y + row * scale, scale, scale, luma);
                    }
                }
            }
            gx = gx.saturating_add(ADVANCE * scale);
        }
    }
}

/// Overlay geometry, fixed at construction from the frame size and label.
#[derive(Debug, Clone, Copy)]
struct Plate {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
    pad: u32,
    scale: u32,
    line_h: u32,
    track_w: u32,
    marker_w: u32,
    /// How many label characters fit; the rest are not drawn.
    label_chars: usize,
}

impl Plate {
    fn new(width: u32, height: u32, label_len: usize) -> Self {
        // One font pixel per 180 lines keeps text legible after encoding
        // (2× at 360p, 4× at 720p) while the plate stays a few percent of
        // the frame.
        let scale = (width.min(height) / 180).max(1);
        let pad = 2 * scale;
        let margin = 2 * scale;
        let advance = ADVANCE * scale;
        let fit = width.saturating_sub(2 * margin + 2 * pad) / advance;
        let label_chars = label_len.min(fit as usize);
        let chars = (label_chars as u32).max(CLOCK_CHARS);
        let line_h = (GLYPH_H + 1) * scale;
        let track_h = 2 * scale;
        let w = chars * advance - scale + 2 * pad;
        let h = 2 * line_h + track_h + 2 * pad;
        let marker_w = 4 * scale;
        Self {
            x: margin,
            y: margin,
            // Even sizes so the plate's chroma matches its luma exactly.
            w: (w + 1) & !1,
            h: (h + 1) & !1,
            pad,
            scale,
            line_h,
            track_w: chars * advance - scale,
            marker_w,
            label_chars,
        }
    }
}

/// Renders the test pattern for a media time into a reused I420 canvas.
pub(crate) struct Renderer {
    canvas: I420,
    pattern: Pattern,
    base: Yuv,
    label: Vec<char>,
    plate: Plate,
    bars: [Yuv; 7],
    /// Start of the bottom band of base colour in the bars pattern (even).
    band_top: u32,
    /// Side of the bouncing box (even).
    box_size: u32,
}

impl Renderer {
    pub(crate) fn new(width: u32, height: u32, pattern: Pattern, color: Rgb, label: &str) -> Self {
        let label: Vec<char> = label.chars().collect();
        let plate = Plate::new(width, height, label.len());
        Self {
            canvas: I420::new(width, height),
            pattern,
            base: color.to_yuv601(),
            plate,
            label,
            bars: BARS.map(Rgb::to_yuv601),
            band_top: (height * 3 / 4) & !1,
            box_size: ((width.min(height) / 5) & !1).max(2),
        }
    }

    pub(crate) fn canvas(&self) -> &I420 {
        &self.canvas
    }

    /// Paints the whole picture for `media_time`. Every pixel is rewritten,
    /// so the result never depends on which frames were rendered before.
    pub(crate) fn render(&mut self, media_time: Duration) {
        let ms = u64::try_from(media_time.as_millis()).unwrap_or(u64::MAX);
        match self.pattern {
            Pattern::Solid => self.canvas.fill_rows(0, self.canvas.height, self.base),
            Pattern::Bars => self.paint_bars(ms),
        }
        self.paint_plate(media_time, ms);
    }

    /// Paints the whole picture white (a sync-mark flash).
    pub(crate) fn paint_flash(&mut self) {
        let white = Yuv {
            y: 235,
            u: 128,
            v: 128,
        };
        self.canvas.fill_rows(0, self.canvas.height, white);
    }

    fn paint_bars(&mut self, ms: u64) {
        let (w, h) = (self.canvas.width, self.canvas.height);
        let (wu, cw) = (w as usize, (w / 2) as usize);
        let offset = (ms % BAR_PERIOD_MS) * u64::from(w) / BAR_PERIOD_MS;
        let band_top = self.band_top;
        let bars = self.bars;
        let (yp, up, vp) = self.canvas.planes_mut();

        // The bars are vertical, so one row of each plane is computed and
        // then copied down: the cost is a memcpy per row, not a colour
        // lookup per pixel.
        let bar_at = |x: u64| {
            let idx = ((x + offset) % u64::from(w)) * 7 / u64::from(w);
            bars[idx as usize]
        };
        for (x, px) in yp[..wu].iter_mut().enumerate() {
            *px = bar_at(x as u64).y;
        }
        for cx in 0..cw {
            // Sample the chroma at the left pixel of each pair so the edges
            // of luma and chroma bars coincide.
            let c = bar_at(2 * cx as u64);
            up[cx] = c.u;
            vp[cx] = c.v;
        }
        for row in 1..band_top as usize {
            yp.copy_within(0..wu, row * wu);
        }
        for row in 1..(band_top / 2) as usize {
            up.copy_within(0..cw, row * cw);
            vp.copy_within(0..cw, row * cw);
        }

        // The bottom quarter is the publisher's colour, so a mixed layout
        // can be checked by colour even with the bars pattern.
        self.canvas.fill_rows(band_top, h, self.base);

        // A white box with a base-colour core bouncing across the picture.
        let size = self.box_size;
        let x = triangle(ms, BOX_PERIOD_X_MS, w.saturating_sub(size));
        let y = triangle(ms, BOX_PERIOD_Y_MS, h.saturating_sub(size));
        self.canvas.fill_rect(x, y, size, size, WHITE);
        let inset = size / 4;
        self.canvas.fill_rect(
            x + inset,
            y + inset,
            size - 2 * inset,
            size - 2 * inset,
            self.base,
        );
    }

    fn paint_plate(&mut self, media_time: Duration, ms: u64) {
        let p = self.plate;
        self.canvas.fill_rect(p.x, p.y, p.w, p.h, BLACK);

        let text_x = p.x + p.pad;
        let label = self.label[..p.label_chars].iter().copied();
        self.canvas
            .draw_text(text_x, p.y + p.pad, p.scale, label, WHITE.y);

        let mut clock = [0u8; 32];
        let len = format_clock(media_time, &mut clock);
        let clock = clock[..len].iter().map(|b| char::from(*b));
        self.canvas
            .draw_text(text_x, p.y + p.pad + p.line_h, p.scale, clock, WHITE.y);

        // The marker sweeps the track once per media second: it moves on
        // every frame at any frame rate, and its position shows sub-second
        // timing at a glance.
        let track_y = p.y + p.pad + 2 * p.line_h;
        let travel = p.track_w.saturating_sub(p.marker_w);
        let marker_x = text_x + ((ms % 1000) * u64::from(travel) / 1000) as u32;
        self.canvas
            .fill_luma(marker_x, track_y, p.marker_w, 2 * p.scale, WHITE.y);
    }
}

/// Position on a back-and-forth sweep over `0..=range`, one round trip per
/// `period_ms`, rounded down to even.
fn triangle(ms: u64, period_ms: u64, range: u32) -> u32 {
    let phase = ms % period_ms;
    let half = period_ms / 2;
    let dist = if phase < half {
        phase
    } else {
        period_ms - phase
    };
    ((dist * u64::from(range) / half) as u32).min(range) & !1
}

/// Writes `HH:MM:SS.mmm` (hours grow past two digits if needed) into `out`
/// and returns its length. Writes into a stack buffer so the per-frame path
/// does not allocate.
pub(crate) fn format_clock(t: Duration, out: &mut [u8; 32]) -> usize {
    let secs = t.as_secs();
    let (h, m, s, ms) = (secs / 3600, secs / 60 % 60, secs % 60, t.subsec_millis());
    let mut cursor = &mut out[..];
    let before = cursor.len();
    // A u64 hour count is at most 20 digits, so 32 bytes always suffice.
    write!(cursor, "{h:02}:{m:02}:{s:02}.{ms:03}").expect("clock text fits in 32 bytes");
    before - cursor.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_format() {
        let mut buf = [0u8; 32];
        let n = format_clock(Duration::from_millis(3_723_045), &mut buf);
        assert_eq!(&buf[..n], b"01:02:03.045");
        let n = format_clock(Duration::from_secs(100 * 3600), &mut buf);
        assert_eq!(&buf[..n], b"100:00:00.000");
        let n = format_clock(Duration::MAX, &mut buf);
        assert!(n > 12);
    }

    #[test]
    fn solid_frame_is_the_colour_outside_the_corner_plate() {
        let color = Rgb(200, 30, 90);
        let want = color.to_yuv601();
        let mut r = Renderer::new(640, 360, Pattern::Solid, color, "alice");
        r.render(Duration::from_millis(1234));
        let (y, u, v) = r.canvas().planes();
        let plate = r.plate;
        // The plate is a small corner of the frame.
        assert!(
            plate.w * plate.h * 20 < 640 * 360,
            "plate too big: {plate:?}"
        );
        let mut solid = 0;
        for row in 0..360u32 {
            for col in 0..640u32 {
                let in_plate = col < plate.x + plate.w && row < plate.y + plate.h;
                let i = (row * 640 + col) as usize;
                let c = ((row / 2) * 320 + col / 2) as usize;
                if !in_plate {
                    assert_eq!(
                        (y[i], u[c], v[c]),
                        (want.y, want.u, want.v),
                        "({col},{row})"
                    );
                    solid += 1;
                }
            }
        }
        assert!(solid > 640 * 360 * 9 / 10);
        // Text was drawn: the plate has both black and white luma.
        let plate_px = |col: u32, row: u32| y[(row * 640 + col) as usize];
        let mut seen = (false, false);
        for row in plate.y..plate.y + plate.h {
            for col in plate.x..plate.x + plate.w {
                seen.0 |= plate_px(col, row) == BLACK.y;
                seen.1 |= plate_px(col, row) == WHITE.y;
            }
        }
        assert_eq!(seen, (true, true));
    }

    #[test]
    fn rendering_depends_only_on_media_time() {
        let mut a = Renderer::new(320, 180, Pattern::Bars, Rgb(1, 2, 3), "x");
        let mut b = Renderer::new(320, 180, Pattern::Bars, Rgb(1, 2, 3), "x");
        a.render(Duration::from_millis(500));
        a.render(Duration::from_millis(900));
        b.render(Duration::from_millis(900));
        assert!(a.canvas().buf == b.canvas().buf);
        b.render(Duration::from_millis(967));
        assert!(a.canvas().buf != b.canvas().buf, "no motion in 67 ms");
    }

    #[test]
    fn tiny_and_huge_frames_render_without_panicking() {
        let long_label = "a-very-long-publisher-name-that-does-not-fit".repeat(4);
        for (w, h) in [(16, 16), (18, 100), (3840, 2160), (2160, 3840)] {
            for pattern in [Pattern::Bars, Pattern::Solid] {
                let mut r = Renderer::new(w, h, pattern, Rgb(9, 9, 9), &long_label);
                r.render(Duration::from_millis(1_499));
                r.render(Duration::from_secs(1_000_000));
            }
        }
    }
}
