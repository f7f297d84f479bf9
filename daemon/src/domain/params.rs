//! Validated recording parameters: what a task *is*.
//!
//! Values of these types only come out of `api::validate` (or back out of
//! the task store, which only ever stored validated values), so code that
//! holds one never re-checks ranges. Defaults from `api-schema.md` are
//! already applied. They serialize into the task store in this internal,
//! snake_case form, independent of the wire names.

use serde::{Deserialize, Serialize};

/// A TRTC room: integer rooms (`RoomIdType` 1, the default) and string rooms
/// (`RoomIdType` 0) are different rooms even when the text is the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum RoomId {
    Int(u32),
    Str(String),
}

impl RoomId {
    /// The room id as callbacks carry it: a JSON number for integer rooms,
    /// a string for string rooms.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            RoomId::Int(n) => serde_json::Value::from(*n),
            RoomId::Str(s) => serde_json::Value::from(s.clone()),
        }
    }

    /// The room's name in the fleet's `rooms` table: integer and string
    /// rooms with the same digits are different rooms (as in TRTC).
    pub fn fleet_key(&self) -> String {
        match self {
            RoomId::Int(n) => n.to_string(),
            RoomId::Str(s) => format!("s:{s}"),
        }
    }
}

impl std::fmt::Display for RoomId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoomId::Int(n) => write!(f, "{n}"),
            RoomId::Str(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordMode {
    Single,
    Mixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamType {
    AudioVideo,
    AudioOnly,
    VideoOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Hls,
    HlsMp4,
    HlsAac,
    Mp4,
    Aac,
}

/// Which video of each user is recorded (`RecordParams.MediaId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaSelection {
    MainAndAux,
    Main,
    Aux,
}

/// One video of a user (`MixLayout.MediaId`, `MixLayoutParams.MediaId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaId {
    Main,
    Aux,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FillType {
    LastFrame,
    Black,
}

/// A subscription list entry: an exact user id, or a `prefix.*$` wildcard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum UserPattern {
    Exact(String),
    Prefix(String),
}

impl UserPattern {
    /// The original text, as the caller wrote it.
    pub fn as_text(&self) -> String {
        match self {
            UserPattern::Exact(s) => s.clone(),
            UserPattern::Prefix(p) => format!("{p}.*$"),
        }
    }

    pub fn matches(&self, user_id: &str) -> bool {
        match self {
            UserPattern::Exact(s) => s == user_id,
            // The spec: "if a real user id equals the pattern it is treated
            // as an exact id" — so the pattern text matches itself too.
            UserPattern::Prefix(p) => user_id.starts_with(p.as_str()) || user_id == self.as_text(),
        }
    }
}

/// Allow- or deny-list for one media kind; `All` when neither was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", content = "users", rename_all = "snake_case")]
pub enum UserFilter {
    All,
    Allow(Vec<UserPattern>),
    Deny(Vec<UserPattern>),
}

impl UserFilter {
    pub fn admits(&self, user_id: &str) -> bool {
        match self {
            UserFilter::All => true,
            UserFilter::Allow(list) => list.iter().any(|p| p.matches(user_id)),
            UserFilter::Deny(list) => !list.iter().any(|p| p.matches(user_id)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub audio: UserFilter,
    pub video: UserFilter,
}

impl Default for Subscription {
    fn default() -> Self {
        Self {
            audio: UserFilter::All,
            video: UserFilter::All,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordParams {
    pub mode: RecordMode,
    pub max_idle_seconds: u32,
    pub stream_type: StreamType,
    pub subscription: Subscription,
    pub output_format: OutputFormat,
    pub av_merge: bool,
    pub max_media_file_minutes: u32,
    pub media: MediaSelection,
    pub fill_type: FillType,
    pub subscribe_ability: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vendor {
    TencentCos,
    AwsS3,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudStorage {
    pub vendor: Vendor,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub file_name_prefix: Vec<String>,
}

impl std::fmt::Debug for CloudStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudStorage")
            .field("vendor", &self.vendor)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("file_name_prefix", &self.file_name_prefix)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VodMediaType {
    Mp4,
    Hls,
    Aac,
    HlsMp4,
    HlsAac,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vod {
    pub procedure: Option<String>,
    /// Seconds to keep the files; 0 = forever.
    pub expire_seconds: u64,
    pub storage_region: Option<String>,
    pub class_id: u64,
    pub sub_app_id: Option<u64>,
    pub session_context: Option<String>,
    pub source_context: Option<String>,
    pub media_type: VodMediaType,
    pub user_define_record_id: Option<String>,
}

/// Where a task's files go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// kiroku's extension: `StorageParams` omitted → `data_dir/storage/`.
    Local,
    Cloud(CloudStorage),
    Vod(Vod),
}

impl Storage {
    /// The `FileNamePrefix` folders in front of `<TaskId>/` in object keys.
    pub fn file_name_prefix(&self) -> &[String] {
        match self {
            Storage::Cloud(c) => &c.file_name_prefix,
            Storage::Local | Storage::Vod(_) => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoParams {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_bps: u32,
    pub gop_seconds: u32,
}

impl Default for VideoParams {
    fn default() -> Self {
        Self {
            width: 360,
            height: 640,
            fps: 15,
            bitrate_bps: 550_000,
            gop_seconds: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioParams {
    pub sample_rate_hz: u32,
    pub channels: u8,
    pub bitrate_bps: u32,
}

impl Default for AudioParams {
    fn default() -> Self {
        Self {
            sample_rate_hz: 48_000,
            channels: 2,
            bitrate_bps: 64_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixTranscode {
    pub video: VideoParams,
    pub audio: AudioParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutMode {
    Float,
    ScreenShare,
    NineGrid,
    Custom,
}

/// How a video is fitted into its rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenderMode {
    Stretch,
    Crop,
    Letterbox,
    SmartStretch,
}

/// An sRGB colour, 8 bits per channel (`#RRGGBB` in the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// BT.601 limited-range Y'CbCr ([`kiroku_gpu::Yuv::from_rgb601`]).
    pub const fn to_yuv601(self) -> kiroku_gpu::Yuv {
        kiroku_gpu::Yuv::from_rgb601(self.0, self.1, self.2)
    }
}

impl From<(u8, u8, u8)> for Rgb {
    fn from((r, g, b): (u8, u8, u8)) -> Self {
        Self(r, g, b)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    pub top: u32,
    pub left: u32,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomTile {
    pub rect: Rect,
    /// `None`: the next user in join order takes this tile.
    pub user_id: Option<String>,
    /// 0 opaque … 255 fully transparent (Tencent's convention).
    pub alpha: u8,
    pub render_mode: RenderMode,
    pub media: MediaId,
    pub layer: u32,
    pub sub_background_image: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Font {
    Tencent,
    SourceHanSans,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampPos {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    TopCenter,
    BottomCenter,
    Center,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Watermark {
    Image {
        url: String,
        rect: Rect,
    },
    Text {
        rect: Rect,
        chars: String,
        font_size: u32,
        font_color: Rgb,
        background: Option<Rgb>,
        font: Font,
    },
    Timestamp {
        pos: TimestampPos,
        utc_offset_hours: i32,
        font: Font,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixLayout {
    pub mode: LayoutMode,
    pub custom: Vec<CustomTile>,
    pub background_color: Rgb,
    pub max_resolution_user: Option<String>,
    pub max_resolution_media: MediaId,
    pub background_image: Option<String>,
    pub background_render_mode: RenderMode,
    pub placeholder: bool,
    pub placeholder_image: Option<String>,
    pub watermarks: Vec<Watermark>,
    pub render_mode: RenderMode,
    pub big_tile_right: bool,
    pub pure_audio_disable_layout: bool,
}

impl MixLayout {
    /// Every image URL the layout uses (background, placeholder, tiles'
    /// sub-backgrounds, image watermarks), each once, in that order.
    pub fn image_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        let mut add = |u: Option<&String>| {
            if let Some(u) = u {
                if !urls.contains(u) {
                    urls.push(u.clone());
                }
            }
        };
        add(self.background_image.as_ref());
        add(self.placeholder_image.as_ref());
        for t in &self.custom {
            add(t.sub_background_image.as_ref());
        }
        for w in &self.watermarks {
            if let Watermark::Image { url, .. } = w {
                add(Some(url));
            }
        }
        urls
    }
}

impl Default for MixLayout {
    fn default() -> Self {
        Self {
            mode: LayoutMode::NineGrid,
            custom: Vec::new(),
            background_color: Rgb(0, 0, 0),
            max_resolution_user: None,
            max_resolution_media: MediaId::Main,
            background_image: None,
            background_render_mode: RenderMode::Crop,
            placeholder: false,
            placeholder_image: None,
            watermarks: Vec::new(),
            render_mode: RenderMode::Crop,
            big_tile_right: false,
            pure_audio_disable_layout: false,
        }
    }
}

/// Everything a CreateCloudRecording asked for, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingSpec {
    pub sdk_app_id: u32,
    pub room: RoomId,
    /// The recorder bot's UserId.
    pub bot_user_id: String,
    pub bot_user_sig: String,
    pub record: RecordParams,
    pub storage: Storage,
    /// Present exactly when `record.mode` is `Mixed` (defaults applied).
    pub mix: Option<MixSettings>,
    pub resource_expired_hours: u32,
    pub private_map_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixSettings {
    pub transcode: MixTranscode,
    pub layout: MixLayout,
}

/// A validated ModifyCloudRecording: each part, when present, replaces the
/// task's value whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Modification {
    pub subscription: Option<Subscription>,
    pub layout: Option<MixLayout>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_patterns_match_prefixes_and_themselves() {
        let p = UserPattern::Prefix("1".into());
        assert!(p.matches("123"));
        assert!(p.matches("1"));
        assert!(p.matches("1.*$"));
        assert!(!p.matches("21"));
        let f = UserFilter::Deny(vec![p, UserPattern::Exact("bob".into())]);
        assert!(!f.admits("10"));
        assert!(!f.admits("bob"));
        assert!(f.admits("alice"));
    }

    #[test]
    fn room_ids_are_typed_in_json() {
        assert_eq!(RoomId::Int(1234).to_json(), serde_json::json!(1234));
        assert_eq!(
            RoomId::Str("1234".into()).to_json(),
            serde_json::json!("1234")
        );
    }
}
