//! The mixed recorder's picture: the layout's watermarks made ready to
//! paint when the layout changes, the layout images it holds, and for each
//! output frame the scene the compositor draws — background, tiles (their
//! sub-backgrounds, videos or placeholders, fitted by render mode), then
//! the watermarks. The clock, the inputs and the encoding stay in
//! [`super`].

use std::sync::Arc;

use kiroku_gpu::{Layer, Picture, Rect, Yuv};

use super::{Images, MixedRecorder, STALE_US};
use crate::domain::params::{FillType, MediaId, MixLayout, RenderMode, Watermark};
use crate::hls::naming::Media;
use crate::mix::layout::{self, Participant, TileContent};
use crate::mix::overlay;
use crate::record::subscribe::media_of;
use crate::room::TrackKind;

/// The watermarks of the current layout, ready to paint.
pub(super) enum Mark {
    Image { url: String, rect: Rect },
    Text { picture: Arc<Picture>, rect: Rect },
    Timestamp(overlay::TimestampRenderer),
}

/// `[0, n)` rounded down to even.
fn even(v: u32) -> u32 {
    v & !1
}

/// A caller's rectangle made even and clipped to the canvas.
fn canvas_rect(left: u32, top: u32, w: u32, h: u32, cw: u32, ch: u32) -> Rect {
    let x = even(left.min(cw));
    let y = even(top.min(ch));
    Rect::new(x, y, even(w.min(cw - x)), even(h.min(ch - y)))
}

/// Layouts waiting for their instant, at most (module docs of `modify_layout`).
const MAX_PENDING_LAYOUTS: usize = 64;

impl MixedRecorder {
    /// ModifyCloudRecording at server time `now_us`: the new layout shows
    /// from the output frame of that instant on, whatever the output's
    /// delay (the latency, and any wait for held media), so the recording
    /// changes where the room did when the call was made.
    pub fn modify_layout(&mut self, layout: MixLayout, now_us: i64) {
        self.pending_layouts.push_back((now_us, layout));
        // A caller that keeps calling Modify cannot pile layouts up: past
        // the bound the oldest is put in force now (a later one follows
        // within the output's delay anyway).
        while self.pending_layouts.len() > MAX_PENDING_LAYOUTS {
            if let Some((_, layout)) = self.pending_layouts.pop_front() {
                self.set_layout(layout);
            }
        }
    }

    /// Image URLs of the layout in force and of those waiting for their instant.
    fn wanted_image_urls(&self) -> Vec<String> {
        let mut urls = self.layout.image_urls();
        for (_, l) in &self.pending_layouts {
            urls.extend(l.image_urls());
        }
        urls
    }

    /// Puts in force the layouts Modify set for instants up to output time `t`.
    pub(super) fn apply_layouts_due(&mut self, t: i64) {
        while self.pending_layouts.front().is_some_and(|(at, _)| *at <= t) {
            if let Some((_, layout)) = self.pending_layouts.pop_front() {
                self.set_layout(layout);
            }
        }
    }

    /// Puts a layout in force from the next output frame.
    pub fn set_layout(&mut self, layout: MixLayout) {
        let (cw, ch) = self.canvas_size();
        self.marks = layout
            .watermarks
            .iter()
            .map(|w| match w {
                Watermark::Image { url, rect } => Mark::Image {
                    url: url.clone(),
                    rect: canvas_rect(rect.left, rect.top, rect.width, rect.height, cw, ch),
                },
                Watermark::Text {
                    rect,
                    chars,
                    font_size,
                    font_color,
                    background,
                    ..
                } => {
                    let rect = canvas_rect(rect.left, rect.top, rect.width, rect.height, cw, ch);
                    let picture = overlay::render_text(
                        chars,
                        *font_size,
                        *font_color,
                        *background,
                        rect.w,
                        rect.h,
                    );
                    Mark::Text {
                        picture: Arc::new(picture),
                        rect,
                    }
                }
                Watermark::Timestamp {
                    pos,
                    utc_offset_hours,
                    ..
                } => Mark::Timestamp(overlay::TimestampRenderer::new(
                    *pos,
                    *utc_offset_hours,
                    cw,
                    ch,
                )),
            })
            .collect();
        // Only the images of the new layout (and of the layouts waiting for
        // their instant) stay: a caller who keeps changing image URLs cannot
        // pile decoded pictures up in memory.
        self.layout = layout;
        let wanted = self.wanted_image_urls();
        self.images.retain(|url, _| wanted.contains(url));
    }

    /// Images fetched for the layout, kept if the current layout uses them
    /// (one that arrives after a Modify dropped it is not).
    pub fn add_images(&mut self, images: Images) {
        let wanted = self.wanted_image_urls();
        self.images
            .extend(images.into_iter().filter(|(url, _)| wanted.contains(url)));
    }

    /// Decoded layout images held (for tests and metrics).
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    fn video_picture(&self, user_id: &str, media: MediaId, t: i64) -> (Option<Arc<Picture>>, bool) {
        let media = match media {
            MediaId::Main => Media::Main,
            MediaId::Aux => Media::Aux,
        };
        let Some(v) = self.videos.get(&(user_id.to_owned(), media)) else {
            return (None, false);
        };
        let Some(p) = v.decoder.latest() else {
            return (None, false);
        };
        // A video whose subscription ended is shown while it lingers.
        let stale = v.shown_at.is_none_or(|s| t - s > STALE_US);
        match (stale, self.settings.fill) {
            (true, FillType::Black) => (None, true),
            _ => (Some(p.clone()), false),
        }
    }

    pub(super) fn build_scene(&mut self, t: i64) {
        let (cw, ch) = self.canvas_size();
        let mut layers = std::mem::take(&mut self.scene[0].layers);
        layers.clear();
        let bg = self.layout.background_color.to_yuv601();
        layers.push(Layer::Fill {
            dst: Rect::new(0, 0, cw, ch),
            color: bg,
        });
        let full = Rect::new(0, 0, cw, ch);
        if let Some(img) = self.image(self.layout.background_image.as_deref()) {
            push_fitted(
                &mut layers,
                img,
                full,
                self.layout.background_render_mode,
                255,
            );
        }
        self.lingering.retain(|l| l.until >= t);
        // Decoders of videos that ended and are shown no more go.
        let lingering = &self.lingering;
        self.videos.retain(|(user_id, media), v| {
            v.tag.is_some()
                || !v.queue.is_empty()
                || lingering
                    .iter()
                    .any(|l| &l.user_id == user_id && media_of(l.kind) == *media)
        });
        let participants: Vec<Participant<'_>> = self
            .participants
            .iter()
            .filter(|u| {
                self.subs
                    .values()
                    .any(|s| &s.user_id == *u && s.shown_at(t))
                    || self.lingering.iter().any(|l| &l.user_id == *u)
            })
            .map(|u| Participant {
                user_id: u,
                main_video: self.has_video(u, TrackKind::MainVideo, t),
                aux_video: self.has_video(u, TrackKind::AuxVideo, t),
            })
            .collect();
        let tiles = layout::place(cw, ch, &self.layout, &participants);
        for tile in &tiles {
            if tile.rect.w == 0 || tile.rect.h == 0 {
                continue;
            }
            let sub_bg = self.image(tile.sub_background_image.as_deref());
            if let Some(img) = sub_bg.clone() {
                push_fitted(&mut layers, img, tile.rect, RenderMode::Crop, tile.opacity);
            }
            let (picture, black) = match &tile.content {
                TileContent::Video { user_id, media } => self.video_picture(user_id, *media, t),
                TileContent::Empty { .. } => (None, false),
            };
            match picture {
                Some(p) => {
                    if tile.render_mode == RenderMode::Letterbox && sub_bg.is_none() {
                        layers.push(Layer::Fill {
                            dst: tile.rect,
                            color: Yuv::BLACK,
                        });
                    }
                    push_fitted(&mut layers, p, tile.rect, tile.render_mode, tile.opacity);
                }
                None if black => layers.push(Layer::Fill {
                    dst: tile.rect,
                    color: Yuv::BLACK,
                }),
                None => {
                    let placeholder = if self.layout.placeholder {
                        self.image(self.layout.placeholder_image.as_deref())
                    } else {
                        None
                    };
                    if let Some(img) = placeholder {
                        push_fitted(&mut layers, img, tile.rect, RenderMode::Crop, tile.opacity);
                    }
                }
            }
        }
        let wall_ms = t / 1000;
        for i in 0..self.marks.len() {
            match &mut self.marks[i] {
                Mark::Image { url, rect } => {
                    let rect = *rect;
                    if let Some(img) = self.images.get(url.as_str()).cloned() {
                        push_fitted(&mut layers, img, rect, RenderMode::Stretch, 255);
                    }
                }
                Mark::Text { picture, rect } => push_fitted(
                    &mut layers,
                    picture.clone(),
                    *rect,
                    RenderMode::Stretch,
                    255,
                ),
                Mark::Timestamp(r) => layers.push(r.layer(wall_ms)),
            }
        }
        self.scene[0].layers = layers;
    }

    fn has_video(&self, user_id: &str, kind: TrackKind, t: i64) -> bool {
        self.subs
            .values()
            .any(|s| s.user_id == user_id && s.kind == kind && s.shown_at(t))
            || self
                .lingering
                .iter()
                .any(|l| l.user_id == user_id && l.kind == kind)
    }

    fn image(&self, url: Option<&str>) -> Option<Arc<Picture>> {
        url.and_then(|u| self.images.get(u)).cloned()
    }
}

/// Adds `picture` fitted into `tile` by `mode`.
fn push_fitted(
    layers: &mut Vec<Layer>,
    picture: Arc<Picture>,
    tile: Rect,
    mode: RenderMode,
    opacity: u8,
) {
    let f = layout::fit(picture.width, picture.height, tile, mode);
    if f.is_empty() || opacity == 0 {
        return;
    }
    layers.push(Layer::Picture {
        source: picture,
        crop: f.crop,
        dst: f.dst,
        opacity,
    });
}
