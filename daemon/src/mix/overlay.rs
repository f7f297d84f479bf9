//! Watermark pictures for the mixed-stream compositor: decoded images,
//! rendered text and the timestamp overlay, each a [`Picture`] ready for a
//! [`Layer::Picture`]. Pure: bytes and parameters in, pictures out
//! (downloading is [`super::fetch`]'s job).
//!
//! # Images
//!
//! - **Format by content.** An image is PNG when its bytes start with the PNG
//!   signature and JPEG when they start with `FF D8 FF`; the URL's extension
//!   and the server's `Content-Type` play no part. Anything else is refused.
//! - **Size checked before decoding.** Width and height are read from the
//!   file header (PNG `IHDR`, JPEG start-of-frame) and checked against
//!   [`ImageLimits`] (default: at most 4096 pixels per side and 8,388,608
//!   pixels in all) before any pixel data is decoded, so a small file that
//!   would inflate into a huge picture is refused cheaply. Zero-sized images
//!   are refused.
//! - **What decodes.** PNG: every colour type and bit depth (palettes and
//!   `tRNS` transparency expanded, 16-bit samples cut to their high byte),
//!   interlaced or not; of an animated PNG, the default image only. JPEG:
//!   baseline and progressive, greyscale, YCbCr, CMYK and YCCK, turned into
//!   RGB by the decoder; a damaged JPEG decodes as far as the decoder can
//!   recover, as in a browser. Colour profiles, gamma and EXIF orientation
//!   are ignored: stored samples are taken as sRGB, upright.
//! - **Alpha.** PNG transparency becomes the picture's alpha; JPEG is opaque.
//!   A picture every pixel of which is opaque carries no alpha planes, so the
//!   compositor can copy instead of blend.
//!
//! # Colour conversion
//!
//! RGB → Y'CbCr is BT.601 limited range, `kiroku_gpu::Yuv::from_rgb601`
//! (through `Rgb::to_yuv601`), the project's one conversion, which the test
//! publisher's pictures use too.
//!
//! 4:2:0 chroma: each chroma sample stands for a 2×2 block of pixels (fewer
//! at the right and bottom edges of odd-sized pictures). Its Cb and Cr are
//! the block's values weighted by each pixel's alpha and rounded to nearest
//! (the plain mean when the whole block is transparent), so the colour of
//! invisible pixels, often black or white in PNGs, does not fringe the
//! visible edge. Its alpha is the rounded mean of the block's alphas.
//!
//! # Text
//!
//! - **One font.** Text and timestamps render with the bundled WenQuanYi
//!   Micro Hei (Apache-2.0, `daemon/assets/fonts/`; Droid Sans Fallback's
//!   CJK glyphs with Droid Sans's Latin), which covers Latin, Greek,
//!   Cyrillic, the unified CJK ideographs U+4E00–U+9FC3, kana and hangul. Both `Font` values of
//!   the API (`Tencent`, `SourceHanSans`) use it: kiroku ships no other font.
//!   A character the font lacks is drawn as the font's missing-glyph box (a
//!   hollow rectangle), so it shows as "something" instead of vanishing;
//!   control characters other than line feed are dropped, a tab counts as
//!   a space.
//! - **Size.** `FontSize` is the em size in pixels, as CSS `font-size`.
//! - **Layout.** Text starts at the box's top-left corner, inset by a padding
//!   of ⌈font size / 8⌉ pixels on every side. Lines break at `\n` and wrap
//!   where the next character would cross the right padding: at the last
//!   space or CJK character boundary of the line, or else right before that
//!   character; spaces at a wrap are dropped. Line height is the font's
//!   ascent − descent + line gap. Everything is clipped to the box.
//! - **Pixels.** The anti-aliased glyph coverage is the alpha and every pixel
//!   has the text colour. With a background colour the box is filled opaque
//!   and the text blended over it (no alpha planes).
//!
//! # Timestamp
//!
//! - **Text.** `YYYY-MM-DD HH:MM:SS`: the frame's wall-clock time (Unix time
//!   in milliseconds, rounded down to the second) in the fixed zone
//!   UTC+`TimeZone` hours; no daylight saving time.
//! - **Look.** White text on a black plate at 50 % opacity, font size
//!   ⌊canvas height / 30⌋ pixels, at least 12 (36 px on a 1080-line canvas).
//! - **Place.** [`timestamp_rect`]: the box is sized for the widest digits,
//!   so it does not move or resize as the time changes, and kept a margin of
//!   ⌊min(canvas width, height) / 40⌋ pixels (even, at least 2) from the
//!   canvas edges, with even coordinates and size, inside the canvas.
//! - **Cost.** [`TimestampRenderer`] renders once per displayed second and
//!   hands the same [`Arc<Picture>`] to every frame of that second.

use std::fmt;
use std::io::Cursor;
use std::sync::{Arc, OnceLock};

use ab_glyph::{point, Font as _, FontRef, GlyphId, PxScale, PxScaleFont, ScaleFont as _};
use kiroku_gpu::{Layer, Picture, Rect, Yuv};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::domain::params::{Rgb, TimestampPos};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
const JPEG_START: [u8; 3] = [0xFF, 0xD8, 0xFF];

/// The font every text and timestamp watermark is drawn with.
static BUNDLED_FONT: &[u8] = include_bytes!("../../assets/fonts/wqy-microhei.ttc");

/// The proportional face of the collection (1 is its monospaced sibling).
const BUNDLED_FACE: u32 = 0;

/// A watermark image format, told from the first bytes of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
}

impl ImageFormat {
    /// The format `bytes` start like, if any.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&PNG_SIGNATURE) {
            Some(Self::Png)
        } else if bytes.starts_with(&JPEG_START) {
            Some(Self::Jpeg)
        } else {
            None
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
        })
    }
}

/// "is empty" or "starts with" the first (up to 8) bytes in hex, for errors
/// about unrecognised content.
pub(crate) fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "is empty".to_owned();
    }
    let hex: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("starts with {}", hex.join(" "))
}

/// How large a decoded image may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width and largest height, in pixels.
    pub max_side: u32,
    /// Largest width × height.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_side: 4096,
            max_pixels: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error("not a PNG or JPEG image: the content {start}")]
    UnknownFormat { start: String },
    #[error(
        "{format} image is {width}x{height} pixels, over the limit of {max_side} pixels \
         per side and {max_pixels} pixels in all"
    )]
    TooLarge {
        format: ImageFormat,
        width: u32,
        height: u32,
        max_side: u32,
        max_pixels: u64,
    },
    #[error("{format} image has zero width or height")]
    ZeroSize { format: ImageFormat },
    #[error("{format} image is damaged or unsupported: {reason}")]
    Decode { format: ImageFormat, reason: String },
}

/// Decodes a PNG or JPEG watermark image into an I420 picture, with alpha
/// planes when the image has transparency. See the module docs for the
/// policy.
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<Picture, ImageError> {
    match ImageFormat::sniff(bytes) {
        Some(ImageFormat::Png) => decode_png(bytes, limits),
        Some(ImageFormat::Jpeg) => decode_jpeg(bytes, limits),
        None => Err(ImageError::UnknownFormat {
            start: describe_start(bytes),
        }),
    }
}

fn check_size(
    format: ImageFormat,
    width: u32,
    height: u32,
    limits: &ImageLimits,
) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize { format });
    }
    if width > limits.max_side
        || height > limits.max_side
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(ImageError::TooLarge {
            format,
            width,
            height,
            max_side: limits.max_side,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}

/// Width and height from the `IHDR` chunk, which the PNG format requires to
/// come first, right after the signature.
fn png_header_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let ihdr = bytes.get(8..24)?;
    if &ihdr[4..8] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&ihdr[8..12]), be(&ihdr[12..16])))
}

fn decode_png(bytes: &[u8], limits: &ImageLimits) -> Result<Picture, ImageError> {
    let format = ImageFormat::Png;
    let decode_error = |reason: String| ImageError::Decode { format, reason };
    let (width, height) = png_header_size(bytes)
        .ok_or_else(|| decode_error("no IHDR chunk after the signature".to_owned()))?;
    check_size(format, width, height, limits)?;

    // The decoder's own allocation cap, as a second line of defence: room
    // for the largest allowed picture at 16 bits × 4 channels plus 1 MiB of
    // metadata chunks.
    let budget = limits.max_pixels.saturating_mul(8).saturating_add(1 << 20);
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: usize::try_from(budget).unwrap_or(usize::MAX),
        },
    );
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| decode_error(e.to_string()))?;
    let buffer_size = reader
        .output_buffer_size()
        .ok_or_else(|| decode_error("decoded size overflows memory".to_owned()))?;
    let mut samples = vec![0u8; buffer_size];
    let frame = reader
        .next_frame(&mut samples)
        .map_err(|e| decode_error(e.to_string()))?;
    let channels = match frame.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(decode_error("palette was not expanded".to_owned())),
    };
    if (frame.width, frame.height) != (width, height)
        || frame.line_size < width as usize * channels
        || samples.len() < frame.line_size * height as usize
    {
        return Err(decode_error(
            "decoder output does not match the header".to_owned(),
        ));
    }
    let stride = frame.line_size;
    Ok(build_picture(width, height, |x, y| {
        let at = y * stride + x * channels;
        let px = &samples[at..at + channels];
        let (rgb, alpha) = match channels {
            1 => (Rgb(px[0], px[0], px[0]), 255),
            2 => (Rgb(px[0], px[0], px[0]), px[1]),
            3 => (Rgb(px[0], px[1], px[2]), 255),
            _ => (Rgb(px[0], px[1], px[2]), px[3]),
        };
        (rgb.to_yuv601(), alpha)
    }))
}

fn decode_jpeg(bytes: &[u8], limits: &ImageLimits) -> Result<Picture, ImageError> {
    let format = ImageFormat::Jpeg;
    let decode_error = |reason: String| ImageError::Decode { format, reason };
    // The decoder's own size cap is lifted to the format's maximum so that
    // our limits, checked below with a typed error, are the ones that apply.
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    let mut decoder = JpegDecoder::new_with_options(Cursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| decode_error(e.to_string()))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| decode_error("no frame header".to_owned()))?;
    let width = u32::try_from(width).unwrap_or(u32::MAX);
    let height = u32::try_from(height).unwrap_or(u32::MAX);
    check_size(format, width, height, limits)?;
    // zune-jpeg 0.5.15 multiplies a crafted stream's coefficients without
    // checking (found by fuzzing: fuzz/regressions/overlay_image/): a
    // panic where overflow is checked, garbage pixels elsewhere. An image
    // from a customer's URL must never take a thread down: its panic is
    // this image's decode error.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode()))
        .map_err(|_| decode_error("the JPEG decoder failed on this stream".to_owned()))?;
    let rgb = decoded.map_err(|e| decode_error(e.to_string()))?;
    let row = width as usize * 3;
    if rgb.len() < row * height as usize {
        return Err(decode_error(
            "decoder output is shorter than the picture".to_owned(),
        ));
    }
    Ok(build_picture(width, height, |x, y| {
        let at = y * row + x * 3;
        (Rgb(rgb[at], rgb[at + 1], rgb[at + 2]).to_yuv601(), 255)
    }))
}

/// Builds the planes of a `width × height` picture from its pixels' colour
/// and alpha (not premultiplied), `pixel(x, y)` being called once per pixel.
/// Chroma and chroma alpha follow the module docs; the alpha planes are left
/// out when every pixel is opaque.
fn build_picture(width: u32, height: u32, pixel: impl Fn(usize, usize) -> (Yuv, u8)) -> Picture {
    let (w, h) = (width as usize, height as usize);
    let (chroma_w, chroma_h) = kiroku_gpu::chroma_size(width, height);
    let (cw, ch) = (chroma_w as usize, chroma_h as usize);
    let mut y_plane = vec![0u8; w * h];
    let mut alpha_plane = vec![0u8; w * h];
    let mut u_plane = vec![0u8; cw * ch];
    let mut v_plane = vec![0u8; cw * ch];
    let mut chroma_alpha = vec![0u8; cw * ch];
    let mut all_opaque = true;
    for cy in 0..ch {
        for cx in 0..cw {
            let (mut n, mut alpha_sum) = (0u32, 0u32);
            let (mut u_sum, mut v_sum) = (0u32, 0u32);
            let (mut u_weighted, mut v_weighted) = (0u32, 0u32);
            for y in 2 * cy..(2 * cy + 2).min(h) {
                for x in 2 * cx..(2 * cx + 2).min(w) {
                    let (color, alpha) = pixel(x, y);
                    y_plane[y * w + x] = color.y;
                    alpha_plane[y * w + x] = alpha;
                    all_opaque &= alpha == 255;
                    let a = u32::from(alpha);
                    n += 1;
                    alpha_sum += a;
                    u_sum += u32::from(color.u);
                    v_sum += u32::from(color.v);
                    u_weighted += u32::from(color.u) * a;
                    v_weighted += u32::from(color.v) * a;
                }
            }
            let at = cy * cw + cx;
            let (u, v) = if alpha_sum == 0 {
                (rounded_div(u_sum, n), rounded_div(v_sum, n))
            } else {
                (
                    rounded_div(u_weighted, alpha_sum),
                    rounded_div(v_weighted, alpha_sum),
                )
            };
            u_plane[at] = u;
            v_plane[at] = v;
            chroma_alpha[at] = rounded_div(alpha_sum, n);
        }
    }
    Picture {
        width,
        height,
        y: y_plane,
        u: u_plane,
        v: v_plane,
        alpha: (!all_opaque).then_some([alpha_plane, chroma_alpha]),
    }
}

/// `num / den` rounded to nearest, for quotients known to fit a byte (means
/// of byte values).
fn rounded_div(num: u32, den: u32) -> u8 {
    ((num + den / 2) / den) as u8
}

fn bundled_font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        // Compiled into the binary; `bundled_font_parses_and_covers_cjk`
        // checks that it loads.
        FontRef::try_from_slice_and_index(BUNDLED_FONT, BUNDLED_FACE)
            .expect("the bundled font is a valid TrueType collection")
    })
}

/// The scale at which the font's em square is `font_size_px` pixels
/// (ab_glyph's `PxScale` measures ascent − descent instead).
fn font_scale(font_size_px: u32) -> PxScale {
    let font = bundled_font();
    let height = font.height_unscaled();
    let units_per_em = font.units_per_em().unwrap_or(height);
    PxScale::from(font_size_px as f32 * height / units_per_em)
}

fn text_padding(font_size_px: u32) -> u32 {
    font_size_px.div_ceil(8)
}

fn line_height(scale: PxScale) -> f32 {
    let scaled = bundled_font().as_scaled(scale);
    scaled.ascent() - scaled.descent() + scaled.line_gap()
}

/// Scripts written without spaces, where a line may wrap between any two
/// characters: CJK punctuation, kana, ideographs, hangul, full-width forms.
fn wraps_anywhere(c: char) -> bool {
    matches!(c,
        '\u{2E80}'..='\u{9FFF}'
        | '\u{AC00}'..='\u{D7AF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{FF00}'..='\u{FFEF}'
        | '\u{20000}'..='\u{3FFFF}')
}

fn may_wrap_between(before: char, after: char) -> bool {
    before.is_whitespace()
        || after.is_whitespace()
        || wraps_anywhere(before)
        || wraps_anywhere(after)
}

#[derive(Debug, Clone, Copy)]
struct PlacedChar {
    c: char,
    glyph: GlyphId,
    x: f32,
    advance: f32,
}

/// Glyphs placed in lines: x from the line's start, in pixels.
struct TextLayout {
    lines: Vec<Vec<PlacedChar>>,
}

impl TextLayout {
    /// Lays `text` out at `scale`, wrapping lines longer than `wrap_width`
    /// pixels when one is given.
    fn new(text: &str, scale: PxScale, wrap_width: Option<f32>) -> Self {
        let scaled = bundled_font().as_scaled(scale);
        let mut lines = Vec::new();
        for paragraph in text.split('\n') {
            let mut line: Vec<PlacedChar> = Vec::new();
            for c in paragraph.chars() {
                let c = match c {
                    '\t' => ' ',
                    c if c.is_control() => continue,
                    c => c,
                };
                let glyph = scaled.glyph_id(c);
                let advance = scaled.h_advance(glyph);
                let mut x = line_end(&scaled, &line, glyph);
                let overflows = wrap_width.is_some_and(|limit| x + advance > limit);
                if overflows && !line.is_empty() {
                    let split = (1..=line.len())
                        .rev()
                        .find(|&i| may_wrap_between(line[i - 1].c, line.get(i).map_or(c, |p| p.c)))
                        .unwrap_or(line.len());
                    let mut carried = line.split_off(split);
                    trim_trailing_spaces(&mut line);
                    lines.push(std::mem::take(&mut line));
                    let leading = carried.iter().take_while(|p| p.c.is_whitespace()).count();
                    carried.drain(..leading);
                    if let Some(first_x) = carried.first().map(|p| p.x) {
                        for placed in &mut carried {
                            placed.x -= first_x;
                        }
                    }
                    line = carried;
                    if line.is_empty() && c.is_whitespace() {
                        continue;
                    }
                    x = line_end(&scaled, &line, glyph);
                }
                line.push(PlacedChar {
                    c,
                    glyph,
                    x,
                    advance,
                });
            }
            trim_trailing_spaces(&mut line);
            lines.push(line);
        }
        Self { lines }
    }

    /// Width of the widest line, in pixels.
    fn width(&self) -> f32 {
        self.lines
            .iter()
            .filter_map(|line| line.last().map(|p| p.x + p.advance))
            .fold(0.0, f32::max)
    }
}

/// Where the next glyph of `line` starts, kerned against the last one.
fn line_end(scaled: &PxScaleFont<&FontRef<'static>>, line: &[PlacedChar], next: GlyphId) -> f32 {
    line.last()
        .map_or(0.0, |p| p.x + p.advance + scaled.kern(p.glyph, next))
}

fn trim_trailing_spaces(line: &mut Vec<PlacedChar>) {
    while line.last().is_some_and(|p| p.c.is_whitespace()) {
        line.pop();
    }
}

/// Size of the box [`render_text`] needs to show `text` without wrapping
/// or clipping: the widest line and all line heights, plus the padding.
pub fn measure_text(text: &str, font_size_px: u32) -> (u32, u32) {
    let scale = font_scale(font_size_px);
    let layout = TextLayout::new(text, scale, None);
    let padding = 2 * text_padding(font_size_px);
    let height = layout.lines.len() as f32 * line_height(scale);
    (
        layout.width().ceil() as u32 + padding,
        height.ceil() as u32 + padding,
    )
}

/// Renders `text` into a `box_w × box_h` picture with the bundled font; see
/// the module docs for the layout. Without a background the picture is
/// transparent where there is no text.
pub fn render_text(
    text: &str,
    font_size_px: u32,
    color: Rgb,
    background: Option<Rgb>,
    box_w: u32,
    box_h: u32,
) -> Picture {
    let plate = background.map(|bg| (bg.to_yuv601(), 255));
    render_text_on_plate(text, font_size_px, color.to_yuv601(), plate, box_w, box_h)
}

/// Text of colour `color` over a plate of colour and alpha `plate` (none:
/// transparent).
fn render_text_on_plate(
    text: &str,
    font_size_px: u32,
    color: Yuv,
    plate: Option<(Yuv, u8)>,
    box_w: u32,
    box_h: u32,
) -> Picture {
    let coverage = text_coverage(text, font_size_px, box_w, box_h);
    let w = box_w as usize;
    let (plate_color, plate_alpha) = plate.unwrap_or((color, 0));
    build_picture(box_w, box_h, |x, y| {
        over(color, coverage[y * w + x], plate_color, plate_alpha)
    })
}

/// Glyph coverage of `text` laid out in a `box_w × box_h` box, one byte per
/// pixel, 0 … 255.
fn text_coverage(text: &str, font_size_px: u32, box_w: u32, box_h: u32) -> Vec<u8> {
    let (w, h) = (box_w as usize, box_h as usize);
    let mut coverage = vec![0u8; w * h];
    if font_size_px == 0 || w == 0 || h == 0 {
        return coverage;
    }
    let font = bundled_font();
    let scale = font_scale(font_size_px);
    let scaled = font.as_scaled(scale);
    let padding = text_padding(font_size_px) as f32;
    let wrap_width = box_w as f32 - 2.0 * padding;
    let layout = TextLayout::new(text, scale, Some(wrap_width));
    let line_height = line_height(scale);
    for (index, line) in layout.lines.iter().enumerate() {
        let top = padding + index as f32 * line_height;
        if top >= box_h as f32 {
            break;
        }
        // Whole-pixel baselines: every line renders alike wherever it falls.
        let baseline = (top + scaled.ascent()).round();
        for placed in line {
            let glyph = placed
                .glyph
                .with_scale_and_position(scale, point(padding + placed.x, baseline));
            let Some(outline) = font.outline_glyph(glyph) else {
                continue;
            };
            let bounds = outline.px_bounds();
            let (left, top) = (bounds.min.x as i64, bounds.min.y as i64);
            outline.draw(|gx, gy, c| {
                let x = left + i64::from(gx);
                let y = top + i64::from(gy);
                if x < 0 || y < 0 || x >= box_w as i64 || y >= box_h as i64 {
                    return;
                }
                let new = (c.clamp(0.0, 1.0) * 255.0).round() as u32;
                let cell = &mut coverage[y as usize * w + x as usize];
                let old = u32::from(*cell);
                // Glyphs that touch the same pixel add up like overlapping
                // translucent layers, never beyond opaque.
                *cell = ((old * 255 + new * (255 - old) + 127) / 255) as u8;
            });
        }
    }
    coverage
}

/// `top` at alpha `top_alpha` over `bottom` at alpha `bottom_alpha`: the
/// colour (not premultiplied) and alpha of the result.
fn over(top: Yuv, top_alpha: u8, bottom: Yuv, bottom_alpha: u8) -> (Yuv, u8) {
    let ta = u32::from(top_alpha);
    let bottom_weight = u32::from(bottom_alpha) * (255 - ta);
    let total = ta * 255 + bottom_weight;
    if total == 0 {
        return (top, 0);
    }
    let mix = |t: u8, b: u8| {
        ((u32::from(t) * ta * 255 + u32::from(b) * bottom_weight + total / 2) / total) as u8
    };
    let color = Yuv {
        y: mix(top.y, bottom.y),
        u: mix(top.u, bottom.u),
        v: mix(top.v, bottom.v),
    };
    (color, ((total + 127) / 255) as u8)
}

/// `YYYY-MM-DD HH:MM:SS` for `unix_ms` (rounded down to the second) in the
/// fixed zone UTC+`utc_offset_hours`. Times beyond the years −9999 … 9999
/// show the nearest end of that range.
pub fn timestamp_text(unix_ms: i64, utc_offset_hours: i32) -> String {
    let local_seconds = unix_ms
        .div_euclid(1000)
        .saturating_add(i64::from(utc_offset_hours) * 3600);
    let first = time::PrimitiveDateTime::MIN.assume_utc().unix_timestamp();
    let last = time::PrimitiveDateTime::MAX.assume_utc().unix_timestamp();
    let local = time::OffsetDateTime::from_unix_timestamp(local_seconds.clamp(first, last))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        local.year(),
        u8::from(local.month()),
        local.day(),
        local.hour(),
        local.minute(),
        local.second()
    )
}

/// Font size of the timestamp on a canvas `canvas_h` pixels high.
pub fn timestamp_font_size(canvas_h: u32) -> u32 {
    (canvas_h / 30).max(12)
}

fn even_floor(n: u32) -> u32 {
    n & !1
}

/// Where a `text_w × text_h` timestamp box goes on the canvas; see the
/// module docs. A box larger than the canvas is cut to the canvas.
pub fn timestamp_rect(
    pos: TimestampPos,
    canvas_w: u32,
    canvas_h: u32,
    text_w: u32,
    text_h: u32,
) -> Rect {
    let (area_w, area_h) = (even_floor(canvas_w), even_floor(canvas_h));
    let w = even_floor(text_w.saturating_add(1)).min(area_w);
    let h = even_floor(text_h.saturating_add(1)).min(area_h);
    let margin = even_floor(canvas_w.min(canvas_h) / 40).max(2);
    let (free_w, free_h) = (area_w - w, area_h - h);
    let near = |free: u32| margin.min(free);
    let far = |free: u32| free.saturating_sub(margin);
    let middle = |free: u32| even_floor(free / 2);
    let (x, y) = match pos {
        TimestampPos::TopLeft => (near(free_w), near(free_h)),
        TimestampPos::TopRight => (far(free_w), near(free_h)),
        TimestampPos::BottomLeft => (near(free_w), far(free_h)),
        TimestampPos::BottomRight => (far(free_w), far(free_h)),
        TimestampPos::TopCenter => (middle(free_w), near(free_h)),
        TimestampPos::BottomCenter => (middle(free_w), far(free_h)),
        TimestampPos::Center => (middle(free_w), middle(free_h)),
    };
    Rect::new(x, y, w, h)
}

/// White, over a black plate at 50 % opacity.
const TIMESTAMP_COLOR: Yuv = Rgb(255, 255, 255).to_yuv601();
const TIMESTAMP_PLATE: (Yuv, u8) = (Yuv::BLACK, 128);

/// The timestamp watermark of one canvas: a fixed box, re-rendered only when
/// the displayed second changes.
#[derive(Debug, Clone)]
pub struct TimestampRenderer {
    utc_offset_hours: i32,
    font_size_px: u32,
    rect: Rect,
    /// The last rendered Unix second and its picture.
    cached: Option<(i64, Arc<Picture>)>,
}

impl TimestampRenderer {
    pub fn new(pos: TimestampPos, utc_offset_hours: i32, canvas_w: u32, canvas_h: u32) -> Self {
        let font_size_px = timestamp_font_size(canvas_h);
        let scaled = bundled_font().as_scaled(font_scale(font_size_px));
        let widest_digit = ('0'..='9')
            .max_by(|a, b| {
                let advance = |c: char| scaled.h_advance(scaled.glyph_id(c));
                advance(*a).total_cmp(&advance(*b))
            })
            .unwrap_or('0');
        let template: String = "0000-00-00 00:00:00"
            .chars()
            .map(|c| if c == '0' { widest_digit } else { c })
            .collect();
        let (text_w, text_h) = measure_text(&template, font_size_px);
        Self {
            utc_offset_hours,
            font_size_px,
            rect: timestamp_rect(pos, canvas_w, canvas_h, text_w, text_h),
            cached: None,
        }
    }

    /// The timestamp's place on the canvas; the same for every frame.
    pub fn rect(&self) -> Rect {
        self.rect
    }

    /// The timestamp picture for the frame at `unix_ms`, of the size of
    /// [`Self::rect`].
    pub fn picture(&mut self, unix_ms: i64) -> Arc<Picture> {
        let second = unix_ms.div_euclid(1000);
        if let Some((cached_second, picture)) = &self.cached {
            if *cached_second == second {
                return Arc::clone(picture);
            }
        }
        let picture = Arc::new(render_text_on_plate(
            &timestamp_text(unix_ms, self.utc_offset_hours),
            self.font_size_px,
            TIMESTAMP_COLOR,
            Some(TIMESTAMP_PLATE),
            self.rect.w,
            self.rect.h,
        ));
        self.cached = Some((second, Arc::clone(&picture)));
        picture
    }

    /// The timestamp as a compositor layer for the frame at `unix_ms`.
    pub fn layer(&mut self, unix_ms: i64) -> Layer {
        let source = self.picture(unix_ms);
        Layer::Picture {
            crop: Rect::new(0, 0, source.width, source.height),
            source,
            dst: self.rect,
            opacity: 255,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG found by fuzzing on which zune-jpeg overflows a multiply:
    /// a decode error naming the format, never a panic.
    #[test]
    fn a_jpeg_that_makes_the_decoder_panic_is_a_decode_error() {
        let crafted = include_bytes!(
            "../../../fuzz/regressions/overlay_image/zune-jpeg-ac-multiply-overflow.jpg"
        );
        match decode_image(crafted, &ImageLimits::default()) {
            Err(ImageError::Decode {
                format: ImageFormat::Jpeg,
                ..
            }) => {}
            other => panic!("expected a JPEG decode error, got {other:?}"),
        }
    }

    const WHITE: Rgb = Rgb(255, 255, 255);

    fn encode_png(
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        palette: Option<(&[u8], &[u8])>,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if let Some((palette, trns)) = palette {
            encoder.set_palette(palette.to_vec());
            encoder.set_trns(trns.to_vec());
        }
        let mut writer = encoder.write_header().expect("png header");
        writer.write_image_data(data).expect("png data");
        writer.finish().expect("png finish");
        out
    }

    fn encode_rgba_png(width: u32, height: u32, rgba: &[u8]) -> Vec<u8> {
        encode_png(
            width,
            height,
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            None,
            rgba,
        )
    }

    fn encode_jpeg(width: u16, height: u16, rgb: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 100)
            .encode(rgb, width, height, jpeg_encoder::ColorType::Rgb)
            .expect("jpeg");
        out
    }

    fn chroma_index(picture: &Picture, x: u32, y: u32) -> usize {
        let (cw, _) = kiroku_gpu::chroma_size(picture.width, picture.height);
        (y / 2 * cw + x / 2) as usize
    }

    #[test]
    fn pure_colours_convert_per_bt601_limited_range() {
        let yuv = |r, g, b| {
            let c = Rgb(r, g, b).to_yuv601();
            (c.y, c.u, c.v)
        };
        assert_eq!(yuv(255, 255, 255), (235, 128, 128));
        assert_eq!(yuv(0, 0, 0), (16, 128, 128));
        assert_eq!(yuv(255, 0, 0), (81, 90, 240));
        assert_eq!(yuv(0, 255, 0), (145, 54, 34));
        assert_eq!(yuv(0, 0, 255), (41, 240, 110));
        assert_eq!(yuv(128, 128, 128), (126, 128, 128));
    }

    #[test]
    fn png_with_alpha_round_trips_on_an_odd_size() {
        // 3×3: a red column, a half-transparent green column, a transparent
        // blue column.
        let mut rgba = Vec::new();
        for _ in 0..3 {
            rgba.extend_from_slice(&[255, 0, 0, 255, 0, 255, 0, 128, 0, 0, 255, 0]);
        }
        let picture =
            decode_image(&encode_rgba_png(3, 3, &rgba), &ImageLimits::default()).expect("decode");
        assert_eq!((picture.width, picture.height), (3, 3));
        assert_eq!(picture.y.len(), 9);
        assert_eq!((picture.u.len(), picture.v.len()), (4, 4));
        let (red, green, blue) = (
            Rgb(255, 0, 0).to_yuv601(),
            Rgb(0, 255, 0).to_yuv601(),
            Rgb(0, 0, 255).to_yuv601(),
        );
        assert_eq!(&picture.y[0..3], &[red.y, green.y, blue.y]);
        let [alpha, chroma_alpha] = picture.alpha.clone().expect("alpha planes");
        assert_eq!(alpha, vec![255, 128, 0, 255, 128, 0, 255, 128, 0]);
        // Block (0,0): two red at 255, two green at 128.
        assert_eq!(chroma_alpha[0], ((2 * 255 + 2 * 128 + 2) / 4) as u8);
        let weighted =
            |r: u8, g: u8| ((u32::from(r) * 255 + u32::from(g) * 128 + 383 / 2) / 383) as u8;
        assert_eq!(picture.u[0], weighted(red.u, green.u));
        assert_eq!(picture.v[0], weighted(red.v, green.v));
        // Block (1,0) is the right edge: one column of fully transparent
        // blue, so a plain mean of blue and alpha 0.
        assert_eq!(chroma_alpha[1], 0);
        assert_eq!((picture.u[1], picture.v[1]), (blue.u, blue.v));
        // Block (0,1) is the bottom edge: one red and one green pixel.
        assert_eq!(chroma_alpha[2], ((255 + 128 + 1) / 2) as u8);
    }

    #[test]
    fn transparent_pixels_do_not_tint_chroma() {
        // One opaque red pixel among three transparent white ones.
        let rgba = [
            255, 0, 0, 255, 255, 255, 255, 0, //
            255, 255, 255, 0, 255, 255, 255, 0,
        ];
        let picture =
            decode_image(&encode_rgba_png(2, 2, &rgba), &ImageLimits::default()).expect("decode");
        let red = Rgb(255, 0, 0).to_yuv601();
        assert_eq!((picture.u[0], picture.v[0]), (red.u, red.v));
        let [_, chroma_alpha] = picture.alpha.expect("alpha planes");
        assert_eq!(chroma_alpha, vec![64]);
    }

    #[test]
    fn opaque_png_carries_no_alpha() {
        let rgba: Vec<u8> = (0..4 * 5 * 4)
            .map(|i| if i % 4 == 3 { 255 } else { (i * 3) as u8 })
            .collect();
        let picture =
            decode_image(&encode_rgba_png(4, 5, &rgba), &ImageLimits::default()).expect("decode");
        assert!(picture.alpha.is_none());
        let rgb: Vec<u8> = (0..3 * 3 * 2).map(|i| (i * 11) as u8).collect();
        let png = encode_png(3, 2, png::ColorType::Rgb, png::BitDepth::Eight, None, &rgb);
        let picture = decode_image(&png, &ImageLimits::default()).expect("decode");
        assert!(picture.alpha.is_none());
        assert_eq!(picture.y[1], Rgb(33, 44, 55).to_yuv601().y);
    }

    #[test]
    fn palette_transparency_and_16_bit_grey_expand() {
        // Palette: opaque white, transparent black; 2 bits per pixel.
        let palette = [255, 255, 255, 0, 0, 0];
        let trns = [255, 0];
        // One row of 4 pixels: 0, 1, 1, 0 → 0b00_01_01_00.
        let png = encode_png(
            4,
            1,
            png::ColorType::Indexed,
            png::BitDepth::Two,
            Some((&palette, &trns)),
            &[0b0001_0100],
        );
        let picture = decode_image(&png, &ImageLimits::default()).expect("palette");
        assert_eq!(picture.y, vec![235, 16, 16, 235]);
        let [alpha, _] = picture.alpha.expect("tRNS becomes alpha");
        assert_eq!(alpha, vec![255, 0, 0, 255]);

        // 16-bit grey: the high byte counts.
        let png = encode_png(
            2,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            None,
            &[0xFF, 0xFF, 0x80, 0xFF],
        );
        let picture = decode_image(&png, &ImageLimits::default()).expect("grey16");
        // 0x80FF keeps 0x80 (grey 128 → Y 126), not 0x81 (Y 127).
        assert_eq!(picture.y, vec![235, 126]);
        assert!(picture.alpha.is_none());
    }

    #[test]
    fn jpeg_round_trips_opaque_on_an_odd_size() {
        // 17×9: left half orange, right half blue.
        let (w, h) = (17u16, 9u16);
        let (orange, blue) = ([240u8, 140, 20], [20u8, 40, 220]);
        let rgb: Vec<u8> = (0..h)
            .flat_map(|_| (0..w).flat_map(move |x| if x < 8 { orange } else { blue }))
            .collect();
        let picture =
            decode_image(&encode_jpeg(w, h, &rgb), &ImageLimits::default()).expect("decode");
        assert_eq!((picture.width, picture.height), (17, 9));
        assert_eq!((picture.u.len(), picture.v.len()), (9 * 5, 9 * 5));
        assert!(picture.alpha.is_none());
        let near = |got: u8, want: u8| got.abs_diff(want) <= 4;
        let (orange, blue) = (
            Rgb(orange[0], orange[1], orange[2]).to_yuv601(),
            Rgb(blue[0], blue[1], blue[2]).to_yuv601(),
        );
        // Away from the colour edge, where JPEG's chroma subsampling blurs.
        let left = 4 * 17 + 1;
        let right = 4 * 17 + 15;
        assert!(near(picture.y[left], orange.y), "{}", picture.y[left]);
        assert!(near(picture.y[right], blue.y), "{}", picture.y[right]);
        let (cl, cr) = (chroma_index(&picture, 1, 4), chroma_index(&picture, 15, 4));
        assert!(near(picture.u[cl], orange.u) && near(picture.v[cl], orange.v));
        assert!(near(picture.u[cr], blue.u) && near(picture.v[cr], blue.v));
    }

    #[test]
    fn format_is_told_by_content() {
        let png = encode_rgba_png(1, 1, &[1, 2, 3, 4]);
        let jpeg = encode_jpeg(1, 1, &[1, 2, 3]);
        assert_eq!(ImageFormat::sniff(&png), Some(ImageFormat::Png));
        assert_eq!(ImageFormat::sniff(&jpeg), Some(ImageFormat::Jpeg));
        assert_eq!(ImageFormat::sniff(b"GIF89a"), None);
        let err = decode_image(b"GIF89a\x01\x00", &ImageLimits::default()).expect_err("gif");
        assert_eq!(
            err.to_string(),
            "not a PNG or JPEG image: the content starts with 47 49 46 38 39 61 01 00"
        );
        assert!(matches!(
            decode_image(b"", &ImageLimits::default()),
            Err(ImageError::UnknownFormat { .. })
        ));
    }

    /// Sets the width and height in a PNG's IHDR (leaving its CRC stale:
    /// the size check must come first).
    fn patch_png_size(png: &mut [u8], width: u32, height: u32) {
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
    }

    /// Sets the width and height in a JPEG's start-of-frame segment.
    fn patch_jpeg_size(jpeg: &mut [u8], width: u16, height: u16) {
        let sof = jpeg
            .windows(2)
            .position(|w| w[0] == 0xFF && matches!(w[1], 0xC0 | 0xC2))
            .expect("SOF marker");
        jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    }

    #[test]
    fn oversized_images_are_refused_from_the_header() {
        let limits = ImageLimits::default();
        // A 1×1 PNG claiming 100000×100000: its pixel data could not fill
        // that, so only a header check can answer TooLarge.
        let mut png = encode_rgba_png(1, 1, &[0, 0, 0, 255]);
        patch_png_size(&mut png, 100_000, 100_000);
        let err = decode_image(&png, &limits).expect_err("png bomb");
        assert!(
            matches!(
                err,
                ImageError::TooLarge {
                    format: ImageFormat::Png,
                    width: 100_000,
                    height: 100_000,
                    ..
                }
            ),
            "{err:?}"
        );
        // Within 4096 per side but over the pixel budget.
        patch_png_size(&mut png, 4096, 4096);
        assert!(matches!(
            decode_image(&png, &limits),
            Err(ImageError::TooLarge { .. })
        ));

        let mut jpeg = encode_jpeg(8, 8, &[90; 8 * 8 * 3]);
        patch_jpeg_size(&mut jpeg, 60_000, 60_000);
        let err = decode_image(&jpeg, &limits).expect_err("jpeg bomb");
        assert!(
            matches!(
                err,
                ImageError::TooLarge {
                    format: ImageFormat::Jpeg,
                    width: 60_000,
                    height: 60_000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "JPEG image is 60000x60000 pixels, over the limit of 4096 pixels per side \
             and 8388608 pixels in all"
        );

        // Custom limits apply to real images too.
        let small = ImageLimits {
            max_side: 16,
            max_pixels: 100,
        };
        let png = encode_rgba_png(11, 10, &[7; 11 * 10 * 4]);
        assert!(matches!(
            decode_image(&png, &small),
            Err(ImageError::TooLarge { .. })
        ));
        let png = encode_rgba_png(10, 10, &[7; 10 * 10 * 4]);
        assert!(decode_image(&png, &small).is_ok());
    }

    #[test]
    fn zero_sized_images_are_refused() {
        let mut png = encode_rgba_png(1, 1, &[0, 0, 0, 255]);
        patch_png_size(&mut png, 0, 1);
        assert!(matches!(
            decode_image(&png, &ImageLimits::default()),
            Err(ImageError::ZeroSize {
                format: ImageFormat::Png
            })
        ));
    }

    #[test]
    fn corrupt_bytes_are_errors_not_panics() {
        let limits = ImageLimits::default();
        let mut garbage_png = PNG_SIGNATURE.to_vec();
        garbage_png.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
        assert!(matches!(
            decode_image(&garbage_png, &limits),
            Err(ImageError::Decode { .. })
        ));
        let mut garbage_jpeg = JPEG_START.to_vec();
        garbage_jpeg.extend((0..200u32).map(|i| (i * 53 % 251) as u8));
        assert!(matches!(
            decode_image(&garbage_jpeg, &limits),
            Err(ImageError::Decode { .. })
        ));

        // Every truncation of valid files: never a panic; PNG needs its
        // image data, JPEG at least its headers.
        let rgba: Vec<u8> = (0..12 * 7 * 4).map(|i| (i * 7) as u8).collect();
        let png = encode_rgba_png(12, 7, &rgba);
        let idat = png
            .windows(4)
            .position(|w| w == b"IDAT")
            .expect("IDAT chunk");
        for len in 0..png.len() {
            let result = decode_image(&png[..len], &limits);
            if len <= idat + 8 {
                assert!(result.is_err(), "PNG cut at {len} decoded");
            }
        }
        let jpeg = encode_jpeg(16, 16, &[120; 16 * 16 * 3]);
        let scan = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xDA])
            .expect("SOS marker");
        for len in 0..jpeg.len() {
            let result = decode_image(&jpeg[..len], &limits);
            if len <= scan {
                assert!(result.is_err(), "JPEG cut at {len} decoded");
            }
        }
        // Flipped bytes in the middle of the data.
        let mut damaged = png.clone();
        for at in (idat + 8..damaged.len()).step_by(5) {
            damaged[at] ^= 0x5A;
        }
        assert!(decode_image(&damaged, &limits).is_err());
    }

    #[test]
    fn bundled_font_parses_and_covers_cjk() {
        let font = FontRef::try_from_slice_and_index(BUNDLED_FONT, BUNDLED_FACE).expect("font");
        for c in "kiroku 記録 テスト 한국어 АБВ αβγ 鬱龘"
            .chars()
            .filter(|c| *c != ' ')
        {
            assert_ne!(font.glyph_id(c).0, 0, "{c} is missing from the font");
        }
    }

    fn ink(picture: &Picture) -> u32 {
        let [alpha, _] = picture.alpha.as_ref().expect("transparent text has alpha");
        alpha.iter().map(|&a| u32::from(a)).sum()
    }

    #[test]
    fn text_renders_latin_and_cjk_with_coverage() {
        let picture = render_text("kiroku 記録 テスト", 32, WHITE, None, 400, 60);
        assert_eq!((picture.width, picture.height), (400, 60));
        let [alpha, chroma_alpha] = picture.alpha.as_ref().expect("alpha");
        assert!(alpha.contains(&255), "no fully covered pixel");
        assert!(alpha.iter().any(|&a| a > 0 && a < 255), "no anti-aliasing");
        assert!(alpha[0] == 0, "the padding is not empty");
        assert_eq!(chroma_alpha.len(), 200 * 30);
        // Every pixel carries the text colour; coverage alone shapes it.
        assert!(picture.y.iter().all(|&y| y == 235));
        assert!(picture.u.iter().chain(&picture.v).all(|&c| c == 128));
        for word in ["記", "録", "テ", "ス", "ト"] {
            let glyph = render_text(word, 32, WHITE, None, 48, 48);
            assert!(ink(&glyph) > 255 * 20, "{word} has almost no coverage");
        }
    }

    #[test]
    fn missing_glyphs_show_as_a_box() {
        let missing = '\u{10FFFD}';
        assert_eq!(bundled_font().glyph_id(missing).0, 0);
        let alone = render_text(&missing.to_string(), 24, WHITE, None, 40, 40);
        let [alpha, _] = alone.alpha.as_ref().expect("alpha");
        // A hollow box: inked rows, with an empty middle.
        let rows = inked_rows(&alone);
        assert!(rows.len() > 10, "{rows:?}");
        let middle_row = rows[rows.len() / 2] as usize;
        let row = &alpha[middle_row * 40..(middle_row + 1) * 40];
        let first = row.iter().position(|&a| a > 128).expect("left edge");
        let last = row.iter().rposition(|&a| a > 128).expect("right edge");
        assert!(last > first + 4 && row[first + 3..last - 2].iter().all(|&a| a < 128));

        let with_missing = ink(&render_text(
            &format!("a{missing}b"),
            24,
            WHITE,
            None,
            200,
            40,
        ));
        let without = ink(&render_text("ab", 24, WHITE, None, 200, 40));
        assert!(with_missing > without);
        let (missing_w, _) = measure_text(&format!("a{missing}b"), 24);
        let (ab_w, _) = measure_text("ab", 24);
        assert!(missing_w > ab_w);
    }

    #[test]
    fn background_makes_the_box_opaque() {
        let picture = render_text("Hi", 20, WHITE, Some(Rgb(0, 0, 255)), 61, 33);
        assert!(picture.alpha.is_none());
        assert_eq!((picture.u.len(), picture.y.len()), (31 * 17, 61 * 33));
        let blue = Rgb(0, 0, 255).to_yuv601();
        assert_eq!(picture.y[0], blue.y);
        assert_eq!(picture.y[61 * 33 - 1], blue.y);
        assert!(picture.y.contains(&235), "no solid text pixel");
        assert!(picture.y.iter().any(|&y| y > blue.y && y < 235), "no edge");
    }

    /// Rows of `picture` (transparent text) that carry any coverage.
    fn inked_rows(picture: &Picture) -> Vec<u32> {
        let [alpha, _] = picture.alpha.as_ref().expect("alpha");
        (0..picture.height)
            .filter(|&y| {
                let row = (y * picture.width) as usize..((y + 1) * picture.width) as usize;
                alpha[row].iter().any(|&a| a > 0)
            })
            .collect()
    }

    #[test]
    fn lines_break_at_newlines_and_wrap_at_the_box() {
        let size = 20;
        let line = line_height(font_scale(size));
        let one = render_text("abc", size, WHITE, None, 300, 100);
        let two = render_text("abc\nabc", size, WHITE, None, 300, 100);
        let below_first = |p: &Picture| {
            inked_rows(p)
                .into_iter()
                .filter(|&y| y as f32 > text_padding(size) as f32 + line)
                .count()
        };
        assert_eq!(below_first(&one), 0);
        assert!(below_first(&two) > 5);
        assert_eq!(ink(&two), 2 * ink(&one));

        // Too wide for one line: wraps at the space into two lines, and no
        // ink is lost.
        let (word_w, _) = measure_text("kiroku", size);
        let wrapped = render_text("kiroku kiroku", size, WHITE, None, word_w + 4, 100);
        assert!(below_first(&wrapped) > 5);
        let single = ink(&render_text("kiroku", size, WHITE, None, word_w + 4, 100));
        assert_eq!(ink(&wrapped), 2 * single);

        // CJK text has no spaces and wraps between characters.
        let (glyph_w, _) = measure_text("記録", size);
        let cjk = render_text("記録記録", size, WHITE, None, glyph_w, 100);
        assert!(below_first(&cjk) > 5);
        assert_eq!(
            ink(&cjk),
            2 * ink(&render_text("記録", size, WHITE, None, glyph_w, 100))
        );
    }

    #[test]
    fn text_is_clipped_to_the_box() {
        for (w, h) in [(1, 1), (3, 5), (7, 2), (0, 0), (40, 9)] {
            let picture = render_text("clipped 記録\nsecond line", 64, WHITE, None, w, h);
            assert_eq!((picture.width, picture.height), (w, h));
            assert_eq!(picture.y.len(), (w * h) as usize);
            let (cw, ch) = kiroku_gpu::chroma_size(w, h);
            assert_eq!(picture.u.len(), (cw * ch) as usize);
        }
        let empty = render_text("", 20, WHITE, None, 10, 10);
        assert_eq!(ink(&empty), 0);
        let zero_size = render_text("abc", 0, WHITE, None, 10, 10);
        assert_eq!(ink(&zero_size), 0);
    }

    #[test]
    fn measure_text_grows_with_text() {
        let (w1, h1) = measure_text("12:00", 30);
        let (w2, h2) = measure_text("12:00:00", 30);
        let (w3, h3) = measure_text("12:00\n12:00", 30);
        assert!(w2 > w1 && h2 == h1);
        assert!(w3 == w1 && h3 > h1 + 30);
        let (w, h) = measure_text("記録", 30);
        assert!(w >= 60 && h >= 30, "{w}x{h}");
    }

    #[test]
    fn timestamps_format_in_their_zone() {
        // 2023-11-14 22:13:20 UTC.
        let t = 1_700_000_000_000;
        assert_eq!(timestamp_text(t, 0), "2023-11-14 22:13:20");
        assert_eq!(timestamp_text(t, 8), "2023-11-15 06:13:20");
        assert_eq!(timestamp_text(t, -5), "2023-11-14 17:13:20");
        assert_eq!(timestamp_text(t + 999, 0), "2023-11-14 22:13:20");
        assert_eq!(timestamp_text(0, 8), "1970-01-01 08:00:00");
        assert_eq!(timestamp_text(-1, 0), "1969-12-31 23:59:59");
        // 2024-01-01 03:00:00 UTC is still 2023 in UTC-5.
        assert_eq!(timestamp_text(1_704_078_000_000, -5), "2023-12-31 22:00:00");
        // 2024-02-29 23:30:00 UTC: a leap day rolls into March in UTC+8.
        assert_eq!(timestamp_text(1_709_249_400_000, 0), "2024-02-29 23:30:00");
        assert_eq!(timestamp_text(1_709_249_400_000, 8), "2024-03-01 07:30:00");
        assert_eq!(timestamp_text(1_709_249_400_000, 14), "2024-03-01 13:30:00");
        assert_eq!(
            timestamp_text(1_709_249_400_000, -12),
            "2024-02-29 11:30:00"
        );
        assert_eq!(timestamp_text(i64::MAX, 14), "9999-12-31 23:59:59");
        assert_eq!(timestamp_text(i64::MIN, -12), "-9999-01-01 00:00:00");
    }

    #[test]
    fn timestamp_rects_are_even_inside_the_canvas() {
        let all = [
            TimestampPos::TopLeft,
            TimestampPos::TopRight,
            TimestampPos::BottomLeft,
            TimestampPos::BottomRight,
            TimestampPos::TopCenter,
            TimestampPos::BottomCenter,
            TimestampPos::Center,
        ];
        let rect = |pos| timestamp_rect(pos, 1920, 1080, 301, 45);
        // Margin: 1080 / 40 = 27, down to even 26; size rounded up to even.
        assert_eq!(rect(TimestampPos::TopLeft), Rect::new(26, 26, 302, 46));
        assert_eq!(rect(TimestampPos::TopRight), Rect::new(1592, 26, 302, 46));
        assert_eq!(rect(TimestampPos::BottomLeft), Rect::new(26, 1008, 302, 46));
        assert_eq!(
            rect(TimestampPos::BottomRight),
            Rect::new(1592, 1008, 302, 46)
        );
        assert_eq!(rect(TimestampPos::TopCenter), Rect::new(808, 26, 302, 46));
        assert_eq!(
            rect(TimestampPos::BottomCenter),
            Rect::new(808, 1008, 302, 46)
        );
        assert_eq!(rect(TimestampPos::Center), Rect::new(808, 516, 302, 46));
        for (cw, ch, tw, th) in [
            (1920, 1080, 301, 45),
            (720, 1280, 200, 30),
            (64, 36, 300, 50),
            (63, 35, 10, 10),
            (2, 2, 1, 1),
        ] {
            for pos in all {
                let r = timestamp_rect(pos, cw, ch, tw, th);
                assert!(
                    r.x % 2 == 0 && r.y % 2 == 0 && r.w % 2 == 0 && r.h % 2 == 0,
                    "{pos:?} {r:?}"
                );
                assert!(r.x + r.w <= cw && r.y + r.h <= ch, "{pos:?} {r:?}");
                assert!(r.w <= tw + 1 && r.h <= th + 1, "{pos:?} {r:?}");
            }
        }
    }

    #[test]
    fn timestamp_renderer_reuses_the_picture_within_a_second() {
        let mut renderer = TimestampRenderer::new(TimestampPos::BottomRight, 8, 1280, 720);
        let rect = renderer.rect();
        assert!(rect.x + rect.w <= 1280 - 18 && rect.y + rect.h <= 720 - 18);
        assert!(rect.w > 0 && rect.h >= 24);
        let t = 1_700_000_000_000;
        let first = renderer.picture(t);
        assert_eq!((first.width, first.height), (rect.w, rect.h));
        assert!(Arc::ptr_eq(&first, &renderer.picture(t + 999)));
        let next = renderer.picture(t + 1000);
        assert!(!Arc::ptr_eq(&first, &next));
        assert!(first.y != next.y, "the seconds digit did not change");
        // Translucent plate, opaque text.
        let [alpha, _] = first.alpha.as_ref().expect("plate is translucent");
        assert_eq!(alpha[0], 128);
        assert!(alpha.contains(&255));
        let Layer::Picture {
            source,
            crop,
            dst,
            opacity,
        } = renderer.layer(t + 1500)
        else {
            panic!("not a picture layer");
        };
        assert!(Arc::ptr_eq(&source, &next));
        assert_eq!(crop, Rect::new(0, 0, rect.w, rect.h));
        assert_eq!((dst, opacity), (rect, 255));
        // Every digit fits: the box was sized for the widest ones.
        let mut wide = TimestampRenderer::new(TimestampPos::TopLeft, 0, 1280, 720);
        let (text_w, _) = measure_text(&timestamp_text(t, 0), timestamp_font_size(720));
        assert!(wide.rect().w >= text_w);
        assert_eq!(wide.picture(t).width, wide.rect().w);
    }
}
