//! The video compositor: paints scenes (ordered layers of fills and scaled
//! pictures) onto I420 canvases.
//!
//! One interface, [`Compositor`], two implementations: [`cpu::CpuCompositor`]
//! (the fallback and the reference) and the wgpu compute-shader compositor.
//! Both follow the integer arithmetic written down in [`spec`] so that their
//! outputs can be compared pixel by pixel.

use std::sync::Arc;

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
    pub const BLACK: Yuv = Yuv { y: 16, u: 128, v: 128 };
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

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    #[error("scene {index}: {reason}")]
    InvalidScene { index: usize, reason: String },
    #[error("{0} scenes but {1} output pictures")]
    BatchMismatch(usize, usize),
    #[error("GPU: {0}")]
    Gpu(String),
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
