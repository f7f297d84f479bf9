//! Mixed-stream layouts (`MixLayoutMode`): where each user's video goes on
//! the canvas, and how a video is fitted into its rectangle.
//!
//! [`place`] is a pure function of the canvas size, the [`MixLayout`] and
//! the users in the room in join order; [`fit`] maps one source picture
//! into one tile. Both are deterministic: equal inputs give equal pixels.
//!
//! # Pictures (float, screen-share and nine-grid)
//!
//! - Every participant holds one picture, in join order. It shows the
//!   user's main video if they send one, else their aux (screen-share)
//!   video, else nothing: an audio-only user holds a placeholder
//!   ([`TileContent::Empty`]). With `PureAudioDisableLayout` a participant
//!   without video holds no picture.
//! - *n*, the number of pictures, selects the row of the tables below. It
//!   includes the big picture of float and screen-share; in screen-share
//!   the big slot counts as one picture even when it shows the background.
//! - The big picture shows `MaxResolutionUserId`'s video `MediaId` when
//!   that user holds a picture. A user who does not send that video shows
//!   their own picture (above) there instead. When the big picture shows a
//!   user's aux video and the user also sends main video, the main video
//!   keeps a small picture at the user's place in join order (counted in
//!   *n*); otherwise the big picture's user has no small picture. No such
//!   user: float takes the first participant holding a picture;
//!   screen-share leaves the big area to the background (no tile).
//! - At most 25 pictures (float, nine-grid) or 24 (screen-share), the big
//!   slot included. The big picture always keeps its place; the pictures of
//!   the participants who joined last are not shown.
//! - Template tiles use the layout's `RenderMode`, are opaque, and carry no
//!   sub-background image.
//!
//! ## Nine-grid (3, the default)
//!
//! Columns × rows: 1 × 1 (n = 1), 2 × 1 (n = 2: each W/2 × H, side by
//! side), 2 × 2 (3–4), 3 × 3 (5–9), 4 × 4 (10–16), 5 × 5 (17–25). Pictures
//! fill the grid row by row from the top-left corner, each row left to
//! right; a partly filled last row is left-aligned, and cells without a
//! picture show the background.
//!
//! ## Float (1)
//!
//! The big picture fills the canvas (layer 0). The small pictures float
//! over it (layer 1) from the bottom-left corner, left to right, then row
//! by row upward. n ≤ 17: 4 per row, each 0.235 W × 0.235 H, 0.012 W /
//! 0.012 H apart and from the canvas edges; n > 17: 5 per row, 0.188 W ×
//! 0.188 H, 0.01 W / 0.01 H apart and from the edges.
//!
//! ## Screen-share (2)
//!
//! The big picture is on the left, the small pictures to its right in
//! columns, each column top to bottom, the column next to the big picture
//! first:
//!
//! | n | columns × rows | small picture | big picture |
//! | --- | --- | --- | --- |
//! | ≤ 5 | 1 × 4 | W/5 × H/4 | 4W/5 × H |
//! | 6–7 | 1 × 6 | W/7 × H/6 | 6W/7 × H |
//! | 8–9 | 1 × 8 | W/9 × H/8 | 8W/9 × H |
//! | 10–17 | 2 × 8 | W/10 × H/8 | 4W/5 × H |
//! | 18–24 | 2 × 8, and a bottom row of up to 8 | W/10 × H/8 | 4W/5 × 7H/8 |
//!
//! From the 17th small picture on (n ≥ 18) the pictures continue in the row
//! under the big picture, from the bottom-left corner, left to right.
//! `MaxResolutionUserAlign` = 1 mirrors the whole layout left–right (a
//! rectangle at x moves to W − x − w): big picture on the right, the
//! columns on the left with the column next to the big picture first, the
//! bottom row from the bottom-right corner.
//!
//! ## Custom (4)
//!
//! One tile per `MixLayoutList` entry, with its own rectangle, render mode,
//! media, layer, sub-background image and opacity 255 − `Alpha` (`Alpha` is
//! 0 opaque … 255 transparent). A tile naming a `UserId` shows that user;
//! tiles without one take, in list order, the participants in join order
//! that no tile names. A tile whose user is absent, or does not send the
//! tile's media, is [`TileContent::Empty`]: it still shows its
//! sub-background image or placeholder. Participants without a tile are not
//! shown. `PureAudioDisableLayout` does not apply.
//!
//! # Paint order
//!
//! Tiles are returned back to front, sorted by layer (custom `ImageLayer`),
//! keeping list order within a layer.
//!
//! # Pixels
//!
//! - Rectangles are in luma pixels, every coordinate and size even (4:2:0
//!   chroma), inside the canvas. An odd canvas size is floored to even.
//! - Template layouts put every edge at an exact fraction of the canvas
//!   (the i-th of k columns spans i·W/k to (i+1)·W/k; float edges are sums
//!   of the table's fractions) and round each edge on its own, in integer
//!   arithmetic, to the nearest even pixel, halves upward. So neighbouring
//!   grid cells share their edge, with neither gap nor overlap; float's
//!   small pictures never overlap; and every size is within 2 px of the
//!   table's exact value.
//! - Custom rectangles round each edge (Left, Left + Width, Top, Top +
//!   Height) the same way, clamped to the canvas.
//! - Rounding never brings edges that are at least 2 px apart together, so
//!   a rectangle whose exact width and height are at least 2 px never comes
//!   out empty. Smaller ones (custom rectangles under
//!   2 px, the W/10 cells of screen-share on a canvas under 20 px wide) may
//!   have zero width or height; they are returned, and the compositor skips
//!   them.
//!
//! # Fitting a picture into a tile ([`fit`])
//!
//! - Stretch (0): the whole source fills the whole tile.
//! - Crop (1): the centred part of the source with the tile's aspect ratio
//!   fills the whole tile.
//! - Letterbox (2): the whole source, aspect ratio kept, in the largest
//!   centred part of the tile; the caller paints the bars.
//! - SmartStretch (3): like Crop, but cropping at most 20% of the source's
//!   width (or height); the remaining aspect difference is stretched.
//!
//! An odd source size is floored to even (its last column or row is never
//! shown); tile edges are rounded inward to even. Computed sizes round to
//! the nearest even pixel, halves upward, and are at least 2 px; centring
//! offsets round down to even. The destination is empty, and the tile
//! skipped, exactly when the tile or the source is under 2 px wide or high.

use std::collections::HashSet;

use kiroku_gpu::Rect;

use crate::domain::params::{LayoutMode, MediaId, MixLayout, RenderMode};

/// Pictures in float and nine-grid layouts, the big one included.
pub const MAX_TEMPLATE_PICTURES: usize = 25;
/// Pictures in the screen-share layout, the big slot included.
pub const MAX_SCREEN_SHARE_PICTURES: usize = 24;

/// A user who counts for the layout (subscribed, in the room), given in
/// room join order. User ids are distinct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Participant<'a> {
    pub user_id: &'a str,
    /// The user sends a main (camera) video the recording subscribes to.
    pub main_video: bool,
    /// The user sends an aux (screen-share) video the recording subscribes to.
    pub aux_video: bool,
}

impl Participant<'_> {
    fn sends(&self, media: MediaId) -> bool {
        match media {
            MediaId::Main => self.main_video,
            MediaId::Aux => self.aux_video,
        }
    }

    fn has_video(&self) -> bool {
        self.main_video || self.aux_video
    }

    /// The picture a user holds in a template layout.
    fn own_picture(&self) -> TileContent {
        if self.main_video {
            self.video(MediaId::Main)
        } else if self.aux_video {
            self.video(MediaId::Aux)
        } else {
            self.placeholder()
        }
    }

    /// What the big picture shows when this user is named for it.
    fn big_picture(&self, media: MediaId) -> TileContent {
        if self.sends(media) {
            self.video(media)
        } else {
            self.own_picture()
        }
    }

    fn video(&self, media: MediaId) -> TileContent {
        TileContent::Video {
            user_id: self.user_id.to_owned(),
            media,
        }
    }

    fn placeholder(&self) -> TileContent {
        TileContent::Empty {
            user_id: Some(self.user_id.to_owned()),
        }
    }
}

/// What a tile shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TileContent {
    /// One video of one user.
    Video { user_id: String, media: MediaId },
    /// No video: an audio-only user, a custom tile whose user does not send
    /// its media (`user_id` set), or a custom tile whose user is absent
    /// (`user_id` is the named user, or `None` for an unnamed tile no
    /// participant was left for). Shows the sub-background image or
    /// placeholder, if any.
    Empty { user_id: Option<String> },
}

/// One rectangle of the canvas and what it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    /// Even coordinates and size, inside the canvas; possibly empty.
    pub rect: Rect,
    pub content: TileContent,
    pub render_mode: RenderMode,
    /// 255 opaque … 0 transparent.
    pub opacity: u8,
    /// Higher layers are painted over lower ones.
    pub layer: u32,
    pub sub_background_image: Option<String>,
}

impl Tile {
    fn template(rect: Rect, content: TileContent, layout: &MixLayout, layer: u32) -> Self {
        Self {
            rect,
            content,
            render_mode: layout.render_mode,
            opacity: u8::MAX,
            layer,
            sub_background_image: None,
        }
    }
}

/// Lays out the participants (in join order) on a `canvas_w × canvas_h`
/// canvas. Returns the tiles back to front.
pub fn place(
    canvas_w: u32,
    canvas_h: u32,
    layout: &MixLayout,
    participants: &[Participant<'_>],
) -> Vec<Tile> {
    let canvas = Canvas::new(canvas_w, canvas_h);
    let mut tiles = match layout.mode {
        LayoutMode::NineGrid => nine_grid(canvas, layout, participants),
        LayoutMode::Float => float(canvas, layout, participants),
        LayoutMode::ScreenShare => screen_share(canvas, layout, participants),
        LayoutMode::Custom => custom(canvas, layout, participants),
    };
    tiles.sort_by_key(|tile| tile.layer);
    tiles
}

/// Who takes the big picture of a template layout.
#[derive(Clone, Copy)]
enum BigPicture {
    /// Nine-grid: there is none.
    Absent,
    /// Float: the named user, else the first participant.
    NamedOrFirst,
    /// Screen-share: the named user, else the background; the slot always
    /// counts as a picture.
    NamedOrBackground,
}

/// The pictures of a template layout.
struct Pictures {
    big: Option<TileContent>,
    /// In join order.
    small: Vec<TileContent>,
    /// The big slot is one of the *n* pictures of the spec's tables.
    big_slot_counts: bool,
}

impl Pictures {
    fn collect(
        layout: &MixLayout,
        participants: &[Participant<'_>],
        big_picture: BigPicture,
        max_pictures: usize,
    ) -> Self {
        let pictured: Vec<&Participant<'_>> = participants
            .iter()
            .filter(|p| !layout.pure_audio_disable_layout || p.has_video())
            .collect();
        let named = layout
            .max_resolution_user
            .as_deref()
            .and_then(|id| pictured.iter().copied().find(|p| p.user_id == id));
        let big_user = match big_picture {
            BigPicture::Absent => None,
            BigPicture::NamedOrFirst => named.or_else(|| pictured.first().copied()),
            BigPicture::NamedOrBackground => named,
        };
        let big = big_user.map(|p| match named {
            Some(_) => p.big_picture(layout.max_resolution_media),
            None => p.own_picture(),
        });
        let big_slot_counts = match big_picture {
            BigPicture::Absent => false,
            BigPicture::NamedOrFirst => big.is_some(),
            BigPicture::NamedOrBackground => true,
        };
        let big_shows_aux = matches!(
            big,
            Some(TileContent::Video {
                media: MediaId::Aux,
                ..
            })
        );
        let small = pictured
            .iter()
            .filter_map(|p| match big_user {
                Some(b) if b.user_id == p.user_id => {
                    (big_shows_aux && p.main_video).then(|| p.video(MediaId::Main))
                }
                _ => Some(p.own_picture()),
            })
            .take(max_pictures - usize::from(big_slot_counts))
            .collect();
        Self {
            big,
            small,
            big_slot_counts,
        }
    }

    /// *n* of the spec's tables.
    fn count(&self) -> usize {
        self.small.len() + usize::from(self.big_slot_counts)
    }
}

fn nine_grid(canvas: Canvas, layout: &MixLayout, participants: &[Participant<'_>]) -> Vec<Tile> {
    let pictures = Pictures::collect(
        layout,
        participants,
        BigPicture::Absent,
        MAX_TEMPLATE_PICTURES,
    );
    let (columns, rows): (u64, u64) = match pictures.count() {
        0 => return Vec::new(),
        1 => (1, 1),
        2 => (2, 1),
        3..=4 => (2, 2),
        5..=9 => (3, 3),
        10..=16 => (4, 4),
        _ => (5, 5),
    };
    (0u64..)
        .zip(pictures.small)
        .map(|(i, content)| {
            let (column, row) = (i % columns, i / columns);
            let rect = canvas.rect(
                Frac::new(column, columns),
                Frac::new(column + 1, columns),
                Frac::new(row, rows),
                Frac::new(row + 1, rows),
            );
            Tile::template(rect, content, layout, 0)
        })
        .collect()
}

fn float(canvas: Canvas, layout: &MixLayout, participants: &[Participant<'_>]) -> Vec<Tile> {
    let pictures = Pictures::collect(
        layout,
        participants,
        BigPicture::NamedOrFirst,
        MAX_TEMPLATE_PICTURES,
    );
    let n = pictures.count();
    let Some(big) = pictures.big else {
        return Vec::new();
    };
    // Thousandths of the canvas; the margin to the edges equals the gap.
    let (per_row, size, gap): (u64, u64, u64) = if n <= 17 { (4, 235, 12) } else { (5, 188, 10) };
    let mut tiles = vec![Tile::template(canvas.full(), big, layout, 0)];
    tiles.extend((0u64..).zip(pictures.small).map(|(i, content)| {
        let (column, row) = (i % per_row, i / per_row);
        let left = gap + column * (size + gap);
        let bottom = 1000 - gap - row * (size + gap);
        let rect = canvas.rect(
            Frac::new(left, 1000),
            Frac::new(left + size, 1000),
            Frac::new(bottom - size, 1000),
            Frac::new(bottom, 1000),
        );
        Tile::template(rect, content, layout, 1)
    }));
    tiles
}

fn screen_share(canvas: Canvas, layout: &MixLayout, participants: &[Participant<'_>]) -> Vec<Tile> {
    let pictures = Pictures::collect(
        layout,
        participants,
        BigPicture::NamedOrBackground,
        MAX_SCREEN_SHARE_PICTURES,
    );
    // The small picture is W/cells_across × H/rows; the right-hand columns
    // take the last `columns` of the cells across.
    let (cells_across, rows, columns, bottom_row): (u64, u64, u64, bool) = match pictures.count() {
        ..=5 => (5, 4, 1, false),
        6..=7 => (7, 6, 1, false),
        8..=9 => (9, 8, 1, false),
        10..=17 => (10, 8, 2, false),
        _ => (10, 8, 2, true),
    };
    let big_right = Frac::new(cells_across - columns, cells_across);
    let big_bottom = if bottom_row {
        Frac::new(rows - 1, rows)
    } else {
        Frac::new(1, 1)
    };
    let mut tiles = Vec::with_capacity(pictures.small.len() + 1);
    if let Some(big) = pictures.big {
        let rect = canvas.rect(Frac::new(0, 1), big_right, Frac::new(0, 1), big_bottom);
        tiles.push(Tile::template(rect, big, layout, 0));
    }
    let in_columns = columns * rows;
    tiles.extend((0u64..).zip(pictures.small).map(|(i, content)| {
        let (cell_x, row) = if i < in_columns {
            (cells_across - columns + i / rows, i % rows)
        } else {
            (i - in_columns, rows - 1)
        };
        let rect = canvas.rect(
            Frac::new(cell_x, cells_across),
            Frac::new(cell_x + 1, cells_across),
            Frac::new(row, rows),
            Frac::new(row + 1, rows),
        );
        Tile::template(rect, content, layout, 0)
    }));
    if layout.big_tile_right {
        for tile in &mut tiles {
            tile.rect.x = canvas.width - tile.rect.x - tile.rect.w;
        }
    }
    tiles
}

fn custom(canvas: Canvas, layout: &MixLayout, participants: &[Participant<'_>]) -> Vec<Tile> {
    let named: HashSet<&str> = layout
        .custom
        .iter()
        .filter_map(|tile| tile.user_id.as_deref())
        .collect();
    let mut unnamed_users = participants.iter().filter(|p| !named.contains(p.user_id));
    layout
        .custom
        .iter()
        .map(|tile| {
            let user = match tile.user_id.as_deref() {
                Some(id) => participants.iter().find(|p| p.user_id == id),
                None => unnamed_users.next(),
            };
            let content = match user {
                Some(p) if p.sends(tile.media) => p.video(tile.media),
                Some(p) => p.placeholder(),
                None => TileContent::Empty {
                    user_id: tile.user_id.clone(),
                },
            };
            let r = &tile.rect;
            let (left, top) = (u64::from(r.left), u64::from(r.top));
            let rect = canvas.pixel_rect(
                left,
                left + u64::from(r.width),
                top,
                top + u64::from(r.height),
            );
            Tile {
                rect,
                content,
                render_mode: tile.render_mode,
                opacity: u8::MAX - tile.alpha,
                layer: tile.layer,
                sub_background_image: tile.sub_background_image.clone(),
            }
        })
        .collect()
}

/// Where a source picture goes inside a tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// The part of the source shown, in source pixels; even, inside the
    /// source, and non-empty whenever `dst` is.
    pub crop: Rect,
    /// Where it is painted, in canvas pixels; even, inside the tile.
    pub dst: Rect,
}

impl Fit {
    /// Nothing to paint: the caller skips the picture.
    pub fn is_empty(&self) -> bool {
        self.dst.w == 0 || self.dst.h == 0
    }
}

/// Fits a `src_w × src_h` source picture into `tile` for `mode` (see the
/// module documentation).
pub fn fit(src_w: u32, src_h: u32, tile: Rect, mode: RenderMode) -> Fit {
    let (sw, sh) = (floor_even(src_w), floor_even(src_h));
    let x0 = ceil_even(tile.x);
    let y0 = ceil_even(tile.y);
    let x1 = floor_even(tile.x.saturating_add(tile.w));
    let y1 = floor_even(tile.y.saturating_add(tile.h));
    let dst = Rect::new(x0, y0, x1.saturating_sub(x0), y1.saturating_sub(y0));
    let whole_source = Rect::new(0, 0, sw, sh);
    if sw == 0 || sh == 0 || dst.w == 0 || dst.h == 0 {
        return Fit {
            crop: whole_source,
            dst: Rect::new(x0, y0, 0, 0),
        };
    }
    match mode {
        RenderMode::Stretch => Fit {
            crop: whole_source,
            dst,
        },
        RenderMode::Crop => Fit {
            crop: centred_crop(sw, sh, dst.w, dst.h, Frac::new(0, 1)),
            dst,
        },
        RenderMode::SmartStretch => Fit {
            crop: centred_crop(sw, sh, dst.w, dst.h, Frac::new(4, 5)),
            dst,
        },
        RenderMode::Letterbox => Fit {
            crop: whole_source,
            dst: letterbox(sw, sh, dst),
        },
    }
}

/// The centred part of an even `sw × sh` source closest to the aspect
/// ratio `tw : th` that keeps at least `keep` of the cropped dimension.
fn centred_crop(sw: u32, sh: u32, tw: u32, th: u32, keep: Frac) -> Rect {
    let (sw64, sh64, tw64, th64) = (u64::from(sw), u64::from(sh), u64::from(tw), u64::from(th));
    let cropped = |full: u32, ideal: u32| {
        let least = ceil_even_frac(u64::from(full) * keep.num, keep.den);
        ideal.max(least).clamp(2, full)
    };
    if sw64 * th64 > sh64 * tw64 {
        let w = cropped(sw, round_even(sh64 * tw64, th64));
        Rect::new(floor_even((sw - w) / 2), 0, w, sh)
    } else if sw64 * th64 < sh64 * tw64 {
        let h = cropped(sh, round_even(sw64 * th64, tw64));
        Rect::new(0, floor_even((sh - h) / 2), sw, h)
    } else {
        Rect::new(0, 0, sw, sh)
    }
}

/// The largest centred part of the even `tile` with the aspect ratio of an
/// even `sw × sh` source.
fn letterbox(sw: u32, sh: u32, tile: Rect) -> Rect {
    let (sw64, sh64, tw64, th64) = (
        u64::from(sw),
        u64::from(sh),
        u64::from(tile.w),
        u64::from(tile.h),
    );
    if sw64 * th64 > sh64 * tw64 {
        let h = round_even(tw64 * sh64, sw64).clamp(2, tile.h);
        Rect::new(tile.x, tile.y + floor_even((tile.h - h) / 2), tile.w, h)
    } else if sw64 * th64 < sh64 * tw64 {
        let w = round_even(th64 * sw64, sh64).clamp(2, tile.w);
        Rect::new(tile.x + floor_even((tile.w - w) / 2), tile.y, w, tile.h)
    } else {
        tile
    }
}

/// An exact fraction `num / den`; `den` is never 0.
#[derive(Debug, Clone, Copy)]
struct Frac {
    num: u64,
    den: u64,
}

impl Frac {
    const fn new(num: u64, den: u64) -> Self {
        Self { num, den }
    }
}

/// The canvas, its size floored to even.
#[derive(Debug, Clone, Copy)]
struct Canvas {
    width: u32,
    height: u32,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Self {
            width: floor_even(width),
            height: floor_even(height),
        }
    }

    fn full(self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// The rectangle whose edges lie at the given fractions of the canvas
    /// width and height, each rounded on its own.
    fn rect(self, left: Frac, right: Frac, top: Frac, bottom: Frac) -> Rect {
        let x = |f: Frac| edge(f.num * u64::from(self.width), f.den, self.width);
        let y = |f: Frac| edge(f.num * u64::from(self.height), f.den, self.height);
        Self::span(x(left), x(right), y(top), y(bottom))
    }

    /// The rectangle with the given edges in pixels, each rounded on its own.
    fn pixel_rect(self, left: u64, right: u64, top: u64, bottom: u64) -> Rect {
        let x = |px: u64| edge(px, 1, self.width);
        let y = |px: u64| edge(px, 1, self.height);
        Self::span(x(left), x(right), y(top), y(bottom))
    }

    fn span(x0: u32, x1: u32, y0: u32, y1: u32) -> Rect {
        Rect::new(x0, y0, x1.saturating_sub(x0), y1.saturating_sub(y0))
    }
}

/// An edge at `num / den` pixels: the nearest even pixel, halves upward, no
/// further than the (even) `limit`. Rounding keeps edges in order, so cells
/// that share an exact edge share the rounded one.
fn edge(num: u64, den: u64, limit: u32) -> u32 {
    round_even(num, den).min(limit)
}

/// `num / den` rounded to the nearest even integer, halves upward;
/// saturates at `u32::MAX - 1`.
fn round_even(num: u64, den: u64) -> u32 {
    let halves = (num + den) / (2 * den);
    u32::try_from(halves * 2).unwrap_or(u32::MAX - 1)
}

/// `num / den` rounded up to even; saturates at `u32::MAX - 1`.
fn ceil_even_frac(num: u64, den: u64) -> u32 {
    let halves = num.div_ceil(2 * den);
    u32::try_from(halves * 2).unwrap_or(u32::MAX - 1)
}

fn floor_even(n: u32) -> u32 {
    n & !1
}

fn ceil_even(n: u32) -> u32 {
    n.saturating_add(n & 1) & !1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::params::{CustomTile, Rect as ApiRect};

    const CANVASES: [(u32, u32); 3] = [(1920, 1080), (360, 640), (1280, 720)];

    fn user_ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("u{i}")).collect()
    }

    fn cameras(ids: &[String]) -> Vec<Participant<'_>> {
        ids.iter()
            .map(|id| Participant {
                user_id: id,
                main_video: true,
                aux_video: false,
            })
            .collect()
    }

    fn user(user_id: &str, main_video: bool, aux_video: bool) -> Participant<'_> {
        Participant {
            user_id,
            main_video,
            aux_video,
        }
    }

    fn layout(mode: LayoutMode) -> MixLayout {
        MixLayout {
            mode,
            ..MixLayout::default()
        }
    }

    fn named(mode: LayoutMode, user_id: &str, media: MediaId) -> MixLayout {
        MixLayout {
            max_resolution_user: Some(user_id.into()),
            max_resolution_media: media,
            ..layout(mode)
        }
    }

    fn video(user_id: &str, media: MediaId) -> TileContent {
        TileContent::Video {
            user_id: user_id.into(),
            media,
        }
    }

    fn main(user_id: &str) -> TileContent {
        video(user_id, MediaId::Main)
    }

    fn empty(user_id: Option<&str>) -> TileContent {
        TileContent::Empty {
            user_id: user_id.map(str::to_owned),
        }
    }

    fn rects(tiles: &[Tile]) -> Vec<Rect> {
        tiles.iter().map(|t| t.rect).collect()
    }

    fn contents(tiles: &[Tile]) -> Vec<TileContent> {
        tiles.iter().map(|t| t.content.clone()).collect()
    }

    fn r(x: u32, y: u32, w: u32, h: u32) -> Rect {
        Rect::new(x, y, w, h)
    }

    fn assert_even_inside(rects: &[Rect], w: u32, h: u32) {
        for r in rects {
            assert!(
                [r.x, r.y, r.w, r.h].iter().all(|v| v % 2 == 0),
                "{r:?} not even"
            );
            assert!(r.x + r.w <= w && r.y + r.h <= h, "{r:?} outside {w}×{h}");
        }
    }

    fn overlaps(a: Rect, b: Rect) -> bool {
        a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h
    }

    fn assert_disjoint(rects: &[Rect]) {
        for (i, a) in rects.iter().enumerate() {
            for b in &rects[i + 1..] {
                assert!(!overlaps(*a, *b), "{a:?} overlaps {b:?}");
            }
        }
    }

    /// `got` is `num/den` of `extent` within the rounding rule: each of the
    /// two edges is off by at most 1 px.
    fn assert_near(got: u32, extent: u32, num: u32, den: u32, what: &str) {
        let (got, exact) = (i64::from(got * den), i64::from(extent * num));
        assert!(
            (got - exact).abs() <= 2 * i64::from(den),
            "{what}: {got}/{den} is not {num}/{den} of {extent}"
        );
    }

    /// An edge within 1 px of `num/den` of `extent`.
    fn assert_edge(got: u32, extent: u32, num: u32, den: u32, what: &str) {
        let (got, exact) = (i64::from(got * den), i64::from(extent * num));
        assert!(
            (got - exact).abs() <= i64::from(den),
            "{what}: edge {} is not at {num}/{den} of {extent}",
            got / i64::from(den)
        );
    }

    #[test]
    fn nine_grid_follows_the_table_for_every_count() {
        for (w, h) in CANVASES {
            for n in 1..=25 {
                let ids = user_ids(n);
                let tiles = place(w, h, &layout(LayoutMode::NineGrid), &cameras(&ids));
                let (cols, rows) = match n {
                    1 => (1, 1),
                    2 => (2, 1),
                    3..=4 => (2, 2),
                    5..=9 => (3, 3),
                    10..=16 => (4, 4),
                    _ => (5, 5),
                };
                assert_eq!(tiles.len(), n);
                assert_even_inside(&rects(&tiles), w, h);
                assert_disjoint(&rects(&tiles));
                for (i, tile) in tiles.iter().enumerate() {
                    let what = format!("{w}×{h} n={n} tile {i}");
                    let rect = tile.rect;
                    assert_eq!(tile.content, main(&ids[i]), "{what}");
                    assert_eq!((tile.layer, tile.opacity), (0, 255), "{what}");
                    assert_near(rect.w, w, 1, cols as u32, &what);
                    assert_near(rect.h, h, 1, rows as u32, &what);
                    // Row by row from the top-left: each cell shares its
                    // edges with its left and upper neighbours, no gaps.
                    let (col, row) = (i % cols, i / cols);
                    if col == 0 {
                        assert_eq!(rect.x, 0, "{what}");
                    } else {
                        let left = tiles[i - 1].rect;
                        assert_eq!((left.x + left.w, left.y), (rect.x, rect.y), "{what}");
                    }
                    if row == 0 {
                        assert_eq!(rect.y, 0, "{what}");
                    } else {
                        let above = tiles[i - cols].rect;
                        assert_eq!((above.y + above.h, above.x), (rect.y, rect.x), "{what}");
                    }
                    if col == cols - 1 {
                        assert_eq!(rect.x + rect.w, w, "{what}");
                    }
                    if row == rows - 1 {
                        assert_eq!(rect.y + rect.h, h, "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn nine_grid_golden_rectangles() {
        let grid = |w, h, n| {
            rects(&place(
                w,
                h,
                &layout(LayoutMode::NineGrid),
                &cameras(&user_ids(n)),
            ))
        };
        assert_eq!(grid(1920, 1080, 1), [r(0, 0, 1920, 1080)]);
        assert_eq!(
            grid(1920, 1080, 2),
            [r(0, 0, 960, 1080), r(960, 0, 960, 1080)]
        );
        assert_eq!(
            grid(1280, 720, 3),
            [r(0, 0, 640, 360), r(640, 0, 640, 360), r(0, 360, 640, 360)]
        );
        assert_eq!(
            grid(1920, 1080, 5),
            [
                r(0, 0, 640, 360),
                r(640, 0, 640, 360),
                r(1280, 0, 640, 360),
                r(0, 360, 640, 360),
                r(640, 360, 640, 360),
            ]
        );
        // 640/3 = 213.3 → edges 0, 214, 426, 640.
        assert_eq!(
            grid(360, 640, 5),
            [
                r(0, 0, 120, 214),
                r(120, 0, 120, 214),
                r(240, 0, 120, 214),
                r(0, 214, 120, 212),
                r(120, 214, 120, 212),
            ]
        );
        // 1280/3 = 426.7 → edges 0, 426, 854, 1280.
        assert_eq!(
            grid(1280, 720, 9)[3..6],
            [
                r(0, 240, 426, 240),
                r(426, 240, 428, 240),
                r(854, 240, 426, 240)
            ]
        );
        assert_eq!(grid(1920, 1080, 25)[24], r(1536, 864, 384, 216));
    }

    #[test]
    fn float_follows_the_table_for_every_count() {
        for (w, h) in CANVASES {
            for n in 1..=25 {
                let ids = user_ids(n);
                let tiles = place(w, h, &layout(LayoutMode::Float), &cameras(&ids));
                assert_eq!(tiles.len(), n);
                assert_eq!(tiles[0].rect, r(0, 0, w, h));
                assert_eq!((tiles[0].layer, &tiles[0].content), (0, &main("u0")));
                let small = &tiles[1..];
                assert_even_inside(&rects(small), w, h);
                assert_disjoint(&rects(small));
                // Thousandths of the canvas.
                let (per_row, size, gap) = if n <= 17 { (4, 235, 12) } else { (5, 188, 10) };
                for (k, tile) in small.iter().enumerate() {
                    let what = format!("{w}×{h} n={n} small {k}");
                    let rect = tile.rect;
                    assert_eq!(tile.layer, 1, "{what}");
                    assert_eq!(tile.content, main(&ids[k + 1]), "{what}");
                    assert_near(rect.w, w, size, 1000, &what);
                    assert_near(rect.h, h, size, 1000, &what);
                    // From the bottom-left corner, left to right, then up.
                    let (col, row) = ((k % per_row) as u32, (k / per_row) as u32);
                    assert_edge(rect.x, w, gap + col * (size + gap), 1000, &what);
                    let bottom = 1000 - gap - row * (size + gap);
                    assert_edge(rect.y + rect.h, h, bottom, 1000, &what);
                }
            }
        }
    }

    #[test]
    fn float_golden_rectangles() {
        let tiles = place(
            1920,
            1080,
            &layout(LayoutMode::Float),
            &cameras(&user_ids(6)),
        );
        assert_eq!(
            rects(&tiles),
            [
                r(0, 0, 1920, 1080),
                r(24, 814, 450, 254),
                r(498, 814, 450, 254),
                r(972, 814, 450, 254),
                r(1446, 814, 450, 254),
                r(24, 546, 450, 254),
            ]
        );
        let tiles = place(
            1920,
            1080,
            &layout(LayoutMode::Float),
            &cameras(&user_ids(18)),
        );
        assert_eq!(tiles[1].rect, r(20, 866, 360, 204));
        assert_eq!(tiles[17].rect, r(400, 224, 360, 204));
    }

    #[test]
    fn float_big_picture_is_the_named_user_else_the_first() {
        let ids = user_ids(4);
        let people = cameras(&ids);
        let tiles = place(
            1280,
            720,
            &named(LayoutMode::Float, "u2", MediaId::Main),
            &people,
        );
        assert_eq!(
            contents(&tiles),
            [main("u2"), main("u0"), main("u1"), main("u3")]
        );
        assert_eq!(tiles[0].rect, r(0, 0, 1280, 720));
        let absent = named(LayoutMode::Float, "ghost", MediaId::Main);
        let tiles = place(1280, 720, &absent, &people);
        assert_eq!(
            contents(&tiles),
            [main("u0"), main("u1"), main("u2"), main("u3")]
        );
        assert!(place(1280, 720, &absent, &[]).is_empty());
    }

    /// The screen-share table: (cells across, rows, columns, bottom row).
    fn share_table(n: usize) -> (u32, u32, u32, bool) {
        match n {
            ..=5 => (5, 4, 1, false),
            6..=7 => (7, 6, 1, false),
            8..=9 => (9, 8, 1, false),
            10..=17 => (10, 8, 2, false),
            _ => (10, 8, 2, true),
        }
    }

    #[test]
    fn screen_share_follows_the_table_for_every_count() {
        for (w, h) in CANVASES {
            for n in 1..=24 {
                let ids = user_ids(n);
                let share = named(LayoutMode::ScreenShare, "u0", MediaId::Main);
                let tiles = place(w, h, &share, &cameras(&ids));
                let (across, rows, columns, bottom_row) = share_table(n);
                assert_eq!(tiles.len(), n);
                assert_even_inside(&rects(&tiles), w, h);
                assert_disjoint(&rects(&tiles));
                let big = tiles[0].rect;
                assert_eq!(tiles[0].content, main("u0"));
                assert_eq!((big.x, big.y), (0, 0));
                assert_near(big.w, w, across - columns, across, "big");
                if bottom_row {
                    assert_near(big.h, h, 7, 8, "big");
                } else {
                    assert_eq!(big.h, h);
                }
                for (k, tile) in tiles[1..].iter().enumerate() {
                    let what = format!("{w}×{h} n={n} small {k}");
                    let rect = tile.rect;
                    assert_eq!(tile.content, main(&ids[k + 1]), "{what}");
                    assert_near(rect.w, w, 1, across, &what);
                    assert_near(rect.h, h, 1, rows, &what);
                    let k = k as u32;
                    if k < columns * rows {
                        // Columns top to bottom, the one by the big picture first.
                        let column = k / rows;
                        assert_edge(rect.x, w, across - columns + column, across, &what);
                        assert_edge(rect.y, h, k % rows, rows, &what);
                        if column == 0 {
                            assert_eq!(rect.x, big.x + big.w, "{what}");
                        }
                    } else {
                        // Then under the big picture from the bottom-left.
                        assert_edge(rect.x, w, k - columns * rows, across, &what);
                        assert_eq!(rect.y, big.y + big.h, "{what}");
                        assert_eq!(rect.y + rect.h, h, "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn screen_share_golden_rectangles() {
        let share = named(LayoutMode::ScreenShare, "u0", MediaId::Main);
        let tiles = place(1920, 1080, &share, &cameras(&user_ids(3)));
        assert_eq!(
            rects(&tiles),
            [
                r(0, 0, 1536, 1080),
                r(1536, 0, 384, 270),
                r(1536, 270, 384, 270)
            ]
        );
        // 7/8 of 1080 = 945 → 946; H/8 = 135 → edges 0, 136, 270, 406, ...
        let tiles = place(1920, 1080, &share, &cameras(&user_ids(19)));
        assert_eq!(tiles[0].rect, r(0, 0, 1536, 946));
        assert_eq!(tiles[1].rect, r(1536, 0, 192, 136));
        assert_eq!(tiles[2].rect, r(1536, 136, 192, 134));
        assert_eq!(tiles[9].rect, r(1728, 0, 192, 136));
        assert_eq!(tiles[16].rect, r(1728, 946, 192, 134));
        assert_eq!(tiles[17].rect, r(0, 946, 192, 134));
        assert_eq!(tiles[18].rect, r(192, 946, 192, 134));
    }

    #[test]
    fn screen_share_big_tile_right_mirrors_the_layout() {
        for (w, h) in CANVASES {
            for n in 1..=24 {
                let ids = user_ids(n);
                let left = named(LayoutMode::ScreenShare, "u0", MediaId::Main);
                let right = MixLayout {
                    big_tile_right: true,
                    ..left.clone()
                };
                let plain = place(w, h, &left, &cameras(&ids));
                let mirrored = place(w, h, &right, &cameras(&ids));
                assert_eq!(contents(&plain), contents(&mirrored));
                for (a, b) in plain.iter().zip(&mirrored) {
                    let (a, b) = (a.rect, b.rect);
                    assert_eq!(r(w - a.x - a.w, a.y, a.w, a.h), b, "{w}×{h} n={n}");
                }
                assert_eq!(mirrored[0].rect.x + mirrored[0].rect.w, w);
            }
        }
    }

    #[test]
    fn screen_share_without_named_user_leaves_the_big_area_to_the_background() {
        let ids = user_ids(5);
        for share in [
            layout(LayoutMode::ScreenShare),
            named(LayoutMode::ScreenShare, "ghost", MediaId::Main),
        ] {
            // 4 users + the background slot: n = 5.
            let tiles = place(1920, 1080, &share, &cameras(&ids[..4]));
            assert_eq!(
                rects(&tiles),
                [
                    r(1536, 0, 384, 270),
                    r(1536, 270, 384, 270),
                    r(1536, 540, 384, 270),
                    r(1536, 810, 384, 270),
                ]
            );
            // 5 users + the background slot: n = 6, W/7 × H/6.
            let tiles = place(1920, 1080, &share, &cameras(&ids));
            assert_eq!(tiles.len(), 5);
            assert!(tiles.iter().all(|t| t.rect.x == 1646 && t.rect.h == 180));
        }
    }

    #[test]
    fn big_aux_picture_keeps_the_users_main_video_as_a_small_picture() {
        let both = [
            user("a", true, false),
            user("b", true, true),
            user("c", false, false),
        ];
        let share = named(LayoutMode::ScreenShare, "b", MediaId::Aux);
        assert_eq!(
            contents(&place(1920, 1080, &share, &both)),
            [
                video("b", MediaId::Aux),
                main("a"),
                main("b"),
                empty(Some("c"))
            ]
        );
        let aux_only = [
            user("a", true, false),
            user("b", false, true),
            user("c", false, false),
        ];
        assert_eq!(
            contents(&place(1920, 1080, &share, &aux_only)),
            [video("b", MediaId::Aux), main("a"), empty(Some("c"))]
        );
        // Named media not sent: the big picture shows the user's own picture.
        let main_only = [user("a", true, false), user("b", true, false)];
        assert_eq!(
            contents(&place(1920, 1080, &share, &main_only)),
            [main("b"), main("a")]
        );
        // Float, main named: the aux video is not shown.
        let float = named(LayoutMode::Float, "b", MediaId::Main);
        assert_eq!(
            contents(&place(1920, 1080, &float, &both)),
            [main("b"), main("a"), empty(Some("c"))]
        );
    }

    #[test]
    fn audio_only_users_hold_a_placeholder_unless_pure_audio_disables_layout() {
        let people = [
            user("a", true, false),
            user("b", false, false),
            user("c", false, true),
        ];
        let grid = layout(LayoutMode::NineGrid);
        let tiles = place(1920, 1080, &grid, &people);
        assert_eq!(
            contents(&tiles),
            [main("a"), empty(Some("b")), video("c", MediaId::Aux)]
        );
        assert_eq!(tiles[2].rect, r(0, 540, 960, 540));
        let no_audio = MixLayout {
            pure_audio_disable_layout: true,
            ..grid
        };
        let tiles = place(1920, 1080, &no_audio, &people);
        assert_eq!(contents(&tiles), [main("a"), video("c", MediaId::Aux)]);
        assert_eq!(rects(&tiles), [r(0, 0, 960, 1080), r(960, 0, 960, 1080)]);
        // Float: the first user with video takes the big picture.
        let float = MixLayout {
            pure_audio_disable_layout: true,
            ..layout(LayoutMode::Float)
        };
        assert_eq!(
            contents(&place(1920, 1080, &float, &people[1..])),
            [video("c", MediaId::Aux)]
        );
        // Screen-share: an audio-only named user leaves the background.
        let share = MixLayout {
            pure_audio_disable_layout: true,
            ..named(LayoutMode::ScreenShare, "b", MediaId::Main)
        };
        let tiles = place(1920, 1080, &share, &people);
        assert_eq!(contents(&tiles), [main("a"), video("c", MediaId::Aux)]);
        assert!(tiles.iter().all(|t| t.rect.x == 1536));
    }

    #[test]
    fn extra_participants_are_not_shown() {
        let ids = user_ids(30);
        let people = cameras(&ids);
        let expected = |big: Option<&str>, small: usize| -> Vec<TileContent> {
            big.into_iter()
                .chain(ids[..small].iter().map(String::as_str))
                .map(main)
                .collect()
        };
        let grid = place(1920, 1080, &layout(LayoutMode::NineGrid), &people);
        assert_eq!(contents(&grid), expected(None, 25));
        let float = place(
            1920,
            1080,
            &named(LayoutMode::Float, "u29", MediaId::Main),
            &people,
        );
        assert_eq!(contents(&float), expected(Some("u29"), 24));
        let share = named(LayoutMode::ScreenShare, "u29", MediaId::Main);
        assert_eq!(
            contents(&place(1920, 1080, &share, &people)),
            expected(Some("u29"), 23)
        );
        let background = place(1920, 1080, &layout(LayoutMode::ScreenShare), &people);
        assert_eq!(contents(&background), expected(None, 23));
    }

    #[test]
    fn template_tiles_use_the_layout_render_mode() {
        for mode in [
            LayoutMode::NineGrid,
            LayoutMode::Float,
            LayoutMode::ScreenShare,
        ] {
            let letterbox = MixLayout {
                render_mode: RenderMode::Letterbox,
                ..named(mode, "u0", MediaId::Main)
            };
            let tiles = place(1280, 720, &letterbox, &cameras(&user_ids(3)));
            assert_eq!(tiles.len(), 3);
            for tile in tiles {
                assert_eq!(tile.render_mode, RenderMode::Letterbox);
                assert_eq!(tile.opacity, 255);
                assert_eq!(tile.sub_background_image, None);
            }
        }
    }

    #[test]
    fn every_api_canvas_gets_even_disjoint_rectangles() {
        let ids = user_ids(26);
        let widths = (16..40).step_by(2).chain((40..=1920).step_by(62));
        for w in widths {
            for h in [16, 90, 358, 1080.min(1920 * 1080 / w / 2 * 2)] {
                for n in 0..=26 {
                    for mode in [
                        LayoutMode::NineGrid,
                        LayoutMode::Float,
                        LayoutMode::ScreenShare,
                    ] {
                        let tiles =
                            place(w, h, &named(mode, "u3", MediaId::Main), &cameras(&ids[..n]));
                        let all = rects(&tiles);
                        assert_even_inside(&all, w, h);
                        // Every cell is at least 2 px exactly from 20 px up.
                        if w >= 20 {
                            assert!(all.iter().all(|r| r.w > 0 && r.h > 0), "{w}×{h} n={n}");
                        }
                        let overlay = if mode == LayoutMode::Float {
                            1.min(all.len())
                        } else {
                            0
                        };
                        assert_disjoint(&all[overlay..]);
                    }
                }
            }
        }
    }

    fn custom_tile(user_id: Option<&str>, layer: u32) -> CustomTile {
        CustomTile {
            rect: ApiRect {
                top: 0,
                left: 0,
                width: 100,
                height: 100,
            },
            user_id: user_id.map(str::to_owned),
            alpha: 0,
            render_mode: RenderMode::Crop,
            media: MediaId::Main,
            layer,
            sub_background_image: None,
        }
    }

    fn custom_layout(tiles: Vec<CustomTile>) -> MixLayout {
        MixLayout {
            custom: tiles,
            ..layout(LayoutMode::Custom)
        }
    }

    #[test]
    fn custom_tiles_take_named_users_then_the_others_in_join_order() {
        let people = [
            user("u0", true, false),
            user("u1", true, false),
            user("u2", true, false),
        ];
        let aux = CustomTile {
            media: MediaId::Aux,
            render_mode: RenderMode::Letterbox,
            sub_background_image: Some("https://example.com/away.png".into()),
            ..custom_tile(None, 1)
        };
        let custom = custom_layout(vec![
            custom_tile(None, 2),
            custom_tile(Some("u2"), 0),
            aux,
            custom_tile(Some("ghost"), 0),
            custom_tile(None, 0),
        ]);
        let tiles = place(1280, 720, &custom, &people);
        assert_eq!(
            contents(&tiles),
            [
                main("u2"),
                empty(Some("ghost")),
                empty(None),
                empty(Some("u1")),
                main("u0"),
            ]
        );
        assert_eq!(
            tiles.iter().map(|t| t.layer).collect::<Vec<_>>(),
            [0, 0, 0, 1, 2]
        );
        assert_eq!(tiles[3].render_mode, RenderMode::Letterbox);
        assert_eq!(
            tiles[3].sub_background_image.as_deref(),
            Some("https://example.com/away.png")
        );
        // A user named twice shows in both tiles; users without a tile are not shown.
        let twice = custom_layout(vec![custom_tile(Some("u1"), 0), custom_tile(Some("u1"), 0)]);
        assert_eq!(
            contents(&place(1280, 720, &twice, &people)),
            [main("u1"), main("u1")]
        );
    }

    #[test]
    fn custom_alpha_becomes_opacity() {
        let custom = custom_layout(
            [0, 55, 255]
                .into_iter()
                .map(|alpha| CustomTile {
                    alpha,
                    ..custom_tile(None, 0)
                })
                .collect(),
        );
        let tiles = place(1280, 720, &custom, &[]);
        assert_eq!(
            tiles.iter().map(|t| t.opacity).collect::<Vec<_>>(),
            [255, 200, 0]
        );
    }

    #[test]
    fn custom_rectangles_round_each_edge_to_even_inside_the_canvas() {
        let at = |left, top, width, height| CustomTile {
            rect: ApiRect {
                top,
                left,
                width,
                height,
            },
            ..custom_tile(None, 0)
        };
        let custom = custom_layout(vec![
            at(1, 3, 161, 99),
            at(199, 0, 161, 640),
            at(0, 0, 1, 1),
            at(1, 1, 1, 1),
            at(300, 600, 100, 100),
        ]);
        let tiles = place(360, 640, &custom, &[]);
        assert_eq!(
            rects(&tiles),
            [
                r(2, 4, 160, 98),
                r(200, 0, 160, 640),
                r(0, 0, 2, 2),
                r(2, 2, 0, 0),
                r(300, 600, 60, 40),
            ]
        );
    }

    #[test]
    fn fit_stretch_shows_the_whole_source_in_the_whole_tile() {
        let tile = r(100, 200, 360, 640);
        assert_eq!(
            fit(1280, 720, tile, RenderMode::Stretch),
            Fit {
                crop: r(0, 0, 1280, 720),
                dst: tile
            }
        );
    }

    #[test]
    fn fit_crop_fills_the_tile_with_the_centre_of_the_source() {
        let portrait = r(0, 0, 360, 640);
        // 1080 × 360/640 = 607.5 → 608.
        assert_eq!(
            fit(1920, 1080, portrait, RenderMode::Crop),
            Fit {
                crop: r(656, 0, 608, 1080),
                dst: portrait
            }
        );
        // 720 × 1080/1920 = 405 → 406; (1280 − 406)/2 = 437 → 436.
        let landscape = r(0, 0, 1920, 1080);
        assert_eq!(
            fit(720, 1280, landscape, RenderMode::Crop).crop,
            r(0, 436, 720, 406)
        );
        assert_eq!(
            fit(1280, 720, landscape, RenderMode::Crop).crop,
            r(0, 0, 1280, 720)
        );
    }

    #[test]
    fn fit_letterbox_keeps_the_whole_source_centred() {
        let whole = r(0, 0, 1920, 1080);
        let bars_above = fit(1920, 1080, r(0, 0, 360, 640), RenderMode::Letterbox);
        assert_eq!(
            (bars_above.crop, bars_above.dst),
            (whole, r(0, 218, 360, 202))
        );
        let bars_beside = fit(720, 1280, r(100, 0, 1920, 1080), RenderMode::Letterbox);
        assert_eq!(bars_beside.dst, r(756, 0, 608, 1080));
        assert_eq!(
            fit(640, 360, r(0, 0, 1280, 720), RenderMode::Letterbox).dst,
            r(0, 0, 1280, 720)
        );
    }

    #[test]
    fn fit_smart_stretch_crops_at_most_a_fifth() {
        let portrait = r(0, 0, 360, 640);
        assert_eq!(
            fit(1920, 1080, portrait, RenderMode::SmartStretch).crop,
            r(192, 0, 1536, 1080)
        );
        let slightly_narrower = r(0, 0, 1800, 1080);
        assert_eq!(
            fit(1920, 1080, slightly_narrower, RenderMode::SmartStretch).crop,
            r(60, 0, 1800, 1080)
        );
        let landscape = r(0, 0, 1920, 1080);
        assert_eq!(
            fit(720, 1280, landscape, RenderMode::SmartStretch).crop,
            r(0, 128, 720, 1024)
        );
    }

    #[test]
    fn fit_handles_odd_sources_extreme_aspects_and_tiny_tiles() {
        let small = r(0, 0, 320, 180);
        assert_eq!(
            fit(641, 361, small, RenderMode::Stretch).crop,
            r(0, 0, 640, 360)
        );
        assert_eq!(
            fit(641, 361, r(0, 0, 100, 100), RenderMode::Crop).crop,
            r(140, 0, 360, 360)
        );
        assert_eq!(fit(3, 3, small, RenderMode::Crop).crop, r(0, 0, 2, 2));
        let square = r(0, 0, 200, 200);
        assert_eq!(fit(1920, 2, square, RenderMode::Crop).crop, r(958, 0, 2, 2));
        assert_eq!(
            fit(1920, 2, square, RenderMode::Letterbox).dst,
            r(0, 98, 200, 2)
        );
        assert_eq!(
            fit(2, 1920, square, RenderMode::Letterbox).dst,
            r(98, 0, 2, 200)
        );
        assert_eq!(
            fit(1920, 2, square, RenderMode::SmartStretch).crop,
            r(192, 0, 1536, 2)
        );
        // Tile edges round inward to even.
        assert_eq!(
            fit(64, 64, r(1, 1, 5, 5), RenderMode::Stretch).dst,
            r(2, 2, 4, 4)
        );
        for mode in [
            RenderMode::Stretch,
            RenderMode::Crop,
            RenderMode::Letterbox,
            RenderMode::SmartStretch,
        ] {
            assert!(fit(1920, 1080, r(0, 0, 1, 1), mode).is_empty());
            assert!(fit(1920, 1080, r(3, 3, 1, 9), mode).is_empty());
            assert!(fit(1, 1080, small, mode).is_empty());
            assert!(fit(0, 0, small, mode).is_empty());
            assert!(!fit(2, 2, r(0, 0, 2, 2), mode).is_empty());
        }
    }

    #[test]
    fn fit_stays_even_and_inside_for_many_shapes() {
        let sources = [
            (2, 2),
            (3, 1079),
            (641, 361),
            (1920, 1080),
            (1080, 1920),
            (4096, 2),
            (2, 4096),
            (1279, 721),
        ];
        let tiles = [
            r(0, 0, 2, 2),
            r(10, 20, 2, 640),
            r(0, 0, 1920, 1080),
            r(100, 50, 360, 640),
            r(6, 6, 1000, 2),
        ];
        for (sw, sh) in sources {
            for tile in tiles {
                for mode in [
                    RenderMode::Stretch,
                    RenderMode::Crop,
                    RenderMode::Letterbox,
                    RenderMode::SmartStretch,
                ] {
                    let what = format!("{sw}×{sh} into {tile:?} {mode:?}");
                    let Fit { crop, dst } = fit(sw, sh, tile, mode);
                    assert!(!fit(sw, sh, tile, mode).is_empty(), "{what}");
                    assert_even_inside(&[crop], sw, sh);
                    assert!(crop.w >= 2 && crop.h >= 2, "{what}");
                    assert_even_inside(&[dst], tile.x + tile.w, tile.y + tile.h);
                    assert!(dst.x >= tile.x && dst.y >= tile.y, "{what}");
                    let (cw, ch, dw, dh) =
                        (crop.w as f64, crop.h as f64, dst.w as f64, dst.h as f64);
                    let (tw, th) = (tile.w as f64, tile.h as f64);
                    match mode {
                        RenderMode::Stretch => {
                            assert_eq!(crop, r(0, 0, sw & !1, sh & !1), "{what}")
                        }
                        // Aspect kept within one rounding step of 2 px.
                        RenderMode::Crop => assert!(
                            (cw * th - ch * tw).abs() <= 2.0 * tw.max(th) || cw == 2.0 || ch == 2.0,
                            "{what}: {crop:?}"
                        ),
                        RenderMode::Letterbox => assert!(
                            (dw * ch - dh * cw).abs() <= 2.0 * cw.max(ch) || dw == 2.0 || dh == 2.0,
                            "{what}: {dst:?}"
                        ),
                        RenderMode::SmartStretch => assert!(
                            cw >= 0.8 * (sw & !1) as f64 && ch >= 0.8 * (sh & !1) as f64,
                            "{what}: {crop:?}"
                        ),
                    }
                    if mode != RenderMode::Letterbox {
                        assert_eq!(dst, tile, "{what}");
                    }
                }
            }
        }
    }
}
