//! The video compositor: paints scenes (ordered layers of fills and scaled
//! pictures) onto I420 canvases.
//!
//! One interface, [`Compositor`], two implementations: [`CpuCompositor`]
//! (the fallback and the reference) and [`WgpuCompositor`] (compute shaders).
//! Both follow the integer arithmetic written down in [`spec`] so that their
//! outputs can be compared pixel by pixel.
//!
//! [`select`] picks one for a machine (a real GPU if there is one, else the
//! CPU) and [`service`] shares it between recording tasks, batching their
//! scenes into one `compose` call.

use std::sync::Arc;

#[cfg(feature = "nvenc")]
pub mod cuda;
#[cfg(feature = "nvenc")]
pub mod nvdec;
#[cfg(feature = "nvenc")]
pub mod nvenc;

pub mod cpu;
pub mod select;
pub mod service;
pub mod spec;
#[cfg(test)]
mod test_support;
pub mod wgpu_compositor;

pub use cpu::CpuCompositor;
pub use select::{select_compositor, CompositorChoice, Selection};
pub use service::{CompositorHandle, CompositorService, ServiceConfig};
pub use spec::{Plane, MAX_DIMENSION};
pub use wgpu_compositor::{GpuContext, GpuInitError, WgpuCompositor};

/// A YUV 4:2:0 picture (BT.601 limited range), planes tightly packed:
/// luma `width × height`, chroma `⌈width/2⌉ × ⌈height/2⌉`.
///
/// `alpha`, when present, is the picture's coverage (0 transparent … 255
/// opaque) at luma resolution and, second, at chroma resolution (each
/// chroma sample the rounded mean of its 2×2 luma block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
    pub alpha: Option<[Vec<u8>; 2]>,
}

impl Picture {
    /// A picture of one colour, without alpha.
    pub fn filled(width: u32, height: u32, color: Yuv) -> Self {
        let (cw, ch) = chroma_size(width, height);
        Self {
            width,
            height,
            y: vec![color.y; (width * height) as usize],
            u: vec![color.u; (cw * ch) as usize],
            v: vec![color.v; (cw * ch) as usize],
            alpha: None,
        }
    }

    /// The samples of one colour plane.
    pub fn plane(&self, plane: Plane) -> &[u8] {
        match plane {
            Plane::Y => &self.y,
            Plane::U => &self.u,
            Plane::V => &self.v,
        }
    }

    /// The samples of one colour plane, writable.
    pub fn plane_mut(&mut self, plane: Plane) -> &mut [u8] {
        match plane {
            Plane::Y => &mut self.y,
            Plane::U => &mut self.u,
            Plane::V => &mut self.v,
        }
    }

    /// The alpha plane at `plane`'s resolution, if the picture has alpha.
    pub fn alpha_plane(&self, plane: Plane) -> Option<&[u8]> {
        self.alpha
            .as_ref()
            .map(|a| a[plane.alpha_index()].as_slice())
    }

    /// Whether every plane has the length `width` and `height` call for.
    pub fn planes_match_size(&self) -> bool {
        let luma = self.width as usize * self.height as usize;
        let (cw, ch) = chroma_size(self.width, self.height);
        let chroma = cw as usize * ch as usize;
        self.y.len() == luma
            && self.u.len() == chroma
            && self.v.len() == chroma
            && self
                .alpha
                .as_ref()
                .is_none_or(|[a, ac]| a.len() == luma && ac.len() == chroma)
    }

    /// Makes this picture a `width × height` canvas for a compositor: when it
    /// already is one (right size, consistent planes) its pixels are kept, so
    /// that what no layer covers stays as it was; otherwise it becomes black,
    /// reusing its allocations. Either way it loses its alpha: a composed
    /// canvas is opaque.
    pub fn prepare_canvas(&mut self, width: u32, height: u32) {
        self.alpha = None;
        if self.width == width && self.height == height && self.planes_match_size() {
            return;
        }
        let (cw, ch) = chroma_size(width, height);
        let luma = width as usize * height as usize;
        let chroma = cw as usize * ch as usize;
        for (plane, len, value) in [
            (&mut self.y, luma, Yuv::BLACK.y),
            (&mut self.u, chroma, Yuv::BLACK.u),
            (&mut self.v, chroma, Yuv::BLACK.v),
        ] {
            plane.clear();
            plane.resize(len, value);
        }
        self.width = width;
        self.height = height;
    }
}

/// Chroma plane size of a `width × height` picture.
pub fn chroma_size(width: u32, height: u32) -> (u32, u32) {
    (width.div_ceil(2), height.div_ceil(2))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Yuv {
    pub y: u8,
    pub u: u8,
    pub v: u8,
}

impl Yuv {
    /// sRGB → BT.601 limited-range Y'CbCr, the only colour conversion of the
    /// project (the mixer's images and text, the test publisher's pictures):
    /// `Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`,
    /// `Cb = 128 + (−37.797 R − 74.203 G + 112 B) / 255`,
    /// `Cr = 128 + (112 R − 93.786 G − 18.214 B) / 255`, in integers
    /// (coefficients × 1000). Every numerator is positive for 8-bit inputs,
    /// so adding half the divisor rounds to nearest: the codes equal the
    /// rounded real-valued matrix exactly (white (235, 128, 128), black
    /// (16, 128, 128)).
    pub const fn from_rgb601(r: u8, g: u8, b: u8) -> Yuv {
        let (r, g, b) = (r as i64, g as i64, b as i64);
        const D: i64 = 255_000;
        let y = (16 * D + 65_481 * r + 128_553 * g + 24_966 * b + D / 2) / D;
        let u = (128 * D - 37_797 * r - 74_203 * g + 112_000 * b + D / 2) / D;
        let v = (128 * D + 112_000 * r - 93_786 * g - 18_214 * b + D / 2) / D;
        Yuv {
            y: y as u8,
            u: u as u8,
            v: v as u8,
        }
    }

    pub const BLACK: Yuv = Yuv {
        y: 16,
        u: 128,
        v: 128,
    };

    /// The component for one plane.
    pub const fn component(self, plane: Plane) -> u8 {
        match plane {
            Plane::Y => self.y,
            Plane::U => self.u,
            Plane::V => self.v,
        }
    }
}

/// A rectangle in luma pixels. In scenes every coordinate and size is even,
/// so that it maps exactly onto the chroma planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    pub const fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Self { x, y, w, h }
    }

    pub const fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    const fn is_even(&self) -> bool {
        (self.x | self.y | self.w | self.h) & 1 == 0
    }

    /// Whether the rectangle lies inside `0..width × 0..height`.
    const fn fits_in(&self, width: u32, height: u32) -> bool {
        self.x as u64 + self.w as u64 <= width as u64
            && self.y as u64 + self.h as u64 <= height as u64
    }
}

/// One layer of a scene, painted over the layers before it.
#[derive(Debug, Clone)]
pub enum Layer {
    /// An opaque rectangle of one colour.
    Fill { dst: Rect, color: Yuv },
    /// The `crop` part of `source`, scaled bilinearly to `dst`, blended with
    /// `opacity` (255 opaque) times the source's own alpha, if it has one.
    Picture {
        source: Arc<Picture>,
        crop: Rect,
        dst: Rect,
        opacity: u8,
    },
}

/// What one canvas shows at one instant.
#[derive(Debug, Clone)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    /// Back to front. Pixels no layer covers are left as they were in the
    /// output picture, so scenes normally start with a full-canvas fill.
    pub layers: Vec<Layer>,
}

impl Layer {
    /// Whether the layer paints no pixel (empty `dst` or `crop`).
    pub fn is_empty(&self) -> bool {
        match self {
            Layer::Fill { dst, .. } => dst.is_empty(),
            Layer::Picture { crop, dst, .. } => dst.is_empty() || crop.is_empty(),
        }
    }

    /// Whether the layer replaces every pixel of `dst` regardless of what
    /// was there (a fill, or a picture without alpha at full opacity).
    pub fn is_opaque(&self) -> bool {
        match self {
            Layer::Fill { .. } => true,
            Layer::Picture {
                source, opacity, ..
            } => *opacity == 255 && source.alpha.is_none(),
        }
    }

    pub fn dst(&self) -> Rect {
        match self {
            Layer::Fill { dst, .. } | Layer::Picture { dst, .. } => *dst,
        }
    }
}

/// Why a scene cannot be composed; the rules are in [`spec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SceneError {
    #[error("canvas {width}x{height} is outside 1..={max} pixels per side", max = MAX_DIMENSION)]
    CanvasSize { width: u32, height: u32 },
    #[error("layer {layer}: {what} {rect:?} has an odd coordinate or size")]
    OddRect {
        layer: usize,
        what: &'static str,
        rect: Rect,
    },
    #[error("layer {layer}: dst {rect:?} reaches outside the {width}x{height} canvas")]
    DstOutsideCanvas {
        layer: usize,
        rect: Rect,
        width: u32,
        height: u32,
    },
    #[error("layer {layer}: crop {rect:?} reaches outside the {width}x{height} source (rounded up to even)")]
    CropOutsideSource {
        layer: usize,
        rect: Rect,
        width: u32,
        height: u32,
    },
    #[error("layer {layer}: source {width}x{height} is larger than {max} pixels per side", max = MAX_DIMENSION)]
    SourceTooLarge {
        layer: usize,
        width: u32,
        height: u32,
    },
    #[error("layer {layer}: source planes do not match its {width}x{height} size")]
    SourcePlanes {
        layer: usize,
        width: u32,
        height: u32,
    },
}

impl Scene {
    /// Checks the rules of [`spec`]: canvas size, even rectangles inside the
    /// canvas, crops inside their sources, source sizes and plane lengths.
    pub fn validate(&self) -> Result<(), SceneError> {
        let (width, height) = (self.width, self.height);
        if !(1..=MAX_DIMENSION).contains(&width) || !(1..=MAX_DIMENSION).contains(&height) {
            return Err(SceneError::CanvasSize { width, height });
        }
        for (layer, l) in self.layers.iter().enumerate() {
            let dst = l.dst();
            if !dst.is_even() {
                return Err(SceneError::OddRect {
                    layer,
                    what: "dst",
                    rect: dst,
                });
            }
            if !dst.fits_in(width, height) {
                return Err(SceneError::DstOutsideCanvas {
                    layer,
                    rect: dst,
                    width,
                    height,
                });
            }
            let Layer::Picture { source, crop, .. } = l else {
                continue;
            };
            let (sw, sh) = (source.width, source.height);
            if sw > MAX_DIMENSION || sh > MAX_DIMENSION {
                return Err(SceneError::SourceTooLarge {
                    layer,
                    width: sw,
                    height: sh,
                });
            }
            if !source.planes_match_size() {
                return Err(SceneError::SourcePlanes {
                    layer,
                    width: sw,
                    height: sh,
                });
            }
            if !crop.is_even() {
                return Err(SceneError::OddRect {
                    layer,
                    what: "crop",
                    rect: *crop,
                });
            }
            if !crop.fits_in(sw.next_multiple_of(2), sh.next_multiple_of(2)) {
                return Err(SceneError::CropOutsideSource {
                    layer,
                    rect: *crop,
                    width: sw,
                    height: sh,
                });
            }
        }
        Ok(())
    }
}

/// Validates every scene of a batch and checks there is one output per
/// scene: the common preamble of [`Compositor::compose`] implementations.
pub fn validate_batch(scenes: &[Scene], outputs: &[Picture]) -> Result<(), ComposeError> {
    if scenes.len() != outputs.len() {
        return Err(ComposeError::BatchMismatch(scenes.len(), outputs.len()));
    }
    for (index, scene) in scenes.iter().enumerate() {
        scene.validate().map_err(|e| ComposeError::InvalidScene {
            index,
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    #[error("scene {index}: {reason}")]
    InvalidScene { index: usize, reason: String },
    #[error("{0} scenes but {1} output pictures")]
    BatchMismatch(usize, usize),
    #[error("GPU: {0}")]
    Gpu(String),
    /// The [`service::CompositorService`] thread is gone.
    #[error("the compositor service has stopped")]
    ServiceStopped,
}

/// Paints scenes onto pictures.
pub trait Compositor: Send {
    /// A short name for logs and metrics (`cpu`, `wgpu`).
    fn name(&self) -> &'static str;

    /// Paints `scenes[i]` onto `outputs[i]` (resized to the scene's canvas
    /// if needed). Implementations batch the whole slice into as few GPU
    /// submissions as they can.
    fn compose(&mut self, scenes: &[Scene], outputs: &mut [Picture]) -> Result<(), ComposeError>;
}

/// Encoder settings for one output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_bps: u32,
    /// Frames between key frames.
    pub gop_frames: u32,
}

/// One encoded H.264 access unit (Annex-B).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    pub data: Vec<u8>,
    pub keyframe: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("encoder unavailable: {0}")]
    Unavailable(String),
    #[error("picture is {got_w}x{got_h}, the encoder was opened for {want_w}x{want_h}")]
    Size {
        got_w: u32,
        got_h: u32,
        want_w: u32,
        want_h: u32,
    },
    #[error("encoder: {0}")]
    Codec(String),
}

/// An H.264 encoder: OpenH264 on the CPU, or NVENC.
pub trait VideoEncoder: Send {
    /// `openh264`, `nvenc`.
    fn name(&self) -> &'static str;
    /// Encodes one picture of the settings' size. `None` when the encoder
    /// skipped the frame (rate control).
    fn encode(
        &mut self,
        picture: &Picture,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError>;
}
