//! Object keys of recordings, exactly as spec §3a.
//!
//! ```text
//! single, m3u8 : <Prefix>/<TaskId>/<SdkAppId>_<RoomId>__UserId_s_<UserId>__UserId_e_<MediaId>_<Type>.m3u8
//! single, ts   : <Prefix>/<TaskId>/<SdkAppId>_<RoomId>__UserId_s_<UserId>__UserId_e_<MediaId>_<Type>_<UTC>.ts
//! single, mp4  : <Prefix>/<TaskId>/<SdkAppId>_<RoomId>__UserId_s_<UserId>__UserId_e_<MediaId>_<Index>.mp4
//! mixed, m3u8  : <Prefix>/<TaskId>/<SdkAppId>_<RoomId>.m3u8
//! mixed, ts    : <Prefix>/<TaskId>/<SdkAppId>_<RoomId>_<UTC>.ts
//! mixed, mp4   : <Prefix>/<TaskId>/<SdkAppId>_<RoomId>_<Index>.mp4
//! HA failover n: the file name (not the folders) gets "ha<n>_"
//! ```
//!
//! `<UserId>` always, and `<RoomId>` for string rooms, are standard base64
//! of the UTF-8 bytes with `/` → `-` and `=` → `.`. `<UTC>` is the segment's
//! UTC start as `YYYYMMDDhhmmssSSS`.
//!
//! With AvMerge = 1 a user's audio and video share one stream; its `<Type>`
//! is `av` (kiroku's choice, following the pattern: `..._main_av.m3u8`).
//! Pure functions; no IO, no clock.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;

use crate::domain::params::RoomId;

/// `<MediaId>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Media {
    Main,
    Aux,
}

impl Media {
    pub fn as_str(self) -> &'static str {
        match self {
            Media::Main => "main",
            Media::Aux => "aux",
        }
    }

    /// The inverse of [`Media::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "main" => Some(Media::Main),
            "aux" => Some(Media::Aux),
            _ => None,
        }
    }
}

/// `<Type>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackType {
    Audio,
    Video,
    /// AvMerge = 1: audio and video in one stream.
    AudioVideo,
}

impl TrackType {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackType::Audio => "audio",
            TrackType::Video => "video",
            TrackType::AudioVideo => "av",
        }
    }

    /// The inverse of [`TrackType::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "audio" => Some(TrackType::Audio),
            "video" => Some(TrackType::Video),
            "av" => Some(TrackType::AudioVideo),
            _ => None,
        }
    }

    /// `TrackType` as Describe and callback 307 report it.
    pub fn api_name(self) -> &'static str {
        match self {
            TrackType::Audio => "audio",
            TrackType::Video => "video",
            TrackType::AudioVideo => "audio_video",
        }
    }
}

/// The spec's base64 variant: standard alphabet, `/` → `-`, `=` → `.`.
pub fn encode_id(id: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(id.as_bytes())
        .replace('/', "-")
        .replace('=', ".")
}

/// Inverse of [`encode_id`] (the merge tool reads names back).
pub fn decode_id(encoded: &str) -> Option<String> {
    let std = encoded.replace('-', "/").replace('.', "=");
    let bytes = base64::engine::general_purpose::STANDARD.decode(std).ok()?;
    String::from_utf8(bytes).ok()
}

/// Unix ms of `t`; 0 before the epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `YYYYMMDDhhmmssSSS` in UTC.
pub fn utc17(t: SystemTime) -> String {
    Utc17(unix_ms(t)).to_string()
}

/// Unix ms written as `YYYYMMDDhhmmssSSS` in UTC, without allocating (a
/// playlist writes one per segment line).
#[derive(Debug, Clone, Copy)]
pub struct Utc17(pub u64);

impl std::fmt::Display for Utc17 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0;
        let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
        match time::OffsetDateTime::from_unix_timestamp(secs) {
            Ok(d) => write!(
                f,
                "{:04}{:02}{:02}{:02}{:02}{:02}{:03}",
                d.year(),
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute(),
                d.second(),
                ms % 1000
            ),
            Err(_) => f.write_str("00000000000000000"),
        }
    }
}

/// A segment's file name: its playlist's name without `.m3u8`, `_`, its
/// start, `.ts` (what [`Naming::single_segment`] and
/// [`Naming::mixed_segment`] write).
pub fn segment_name(playlist_base: &str, start_ms: u64) -> String {
    format!("{playlist_base}_{}.ts", Utc17(start_ms))
}

/// `YYYYMMDDhhmmssSSS` (UTC) as Unix ms.
pub fn parse_utc17(digits: &str) -> Option<u64> {
    if digits.len() != 17 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |from: usize, to: usize| digits.get(from..to)?.parse::<u16>().ok();
    let month = time::Month::try_from(u8::try_from(n(4, 6)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::from(n(0, 4)?), month, n(6, 8)? as u8).ok()?;
    let clock = time::Time::from_hms_milli(
        n(8, 10)? as u8,
        n(10, 12)? as u8,
        n(12, 14)? as u8,
        n(14, 17)?,
    )
    .ok()?;
    let t = time::PrimitiveDateTime::new(date, clock).assume_utc();
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The `<UTC>` of a segment name `..._<UTC>.ts`, as Unix ms.
pub fn segment_start_ms(file_name: &str) -> Option<u64> {
    let stem = file_name.strip_suffix(".ts")?;
    parse_utc17(stem.rsplit_once('_').map_or(stem, |(_, t)| t))
}

/// The single-stream part of a name, from `__UserId_s_` on:
/// `__UserId_s_<user>__UserId_e_<media>_<type><tail>`, as (the user id
/// still encoded, media, type, tail). The one parser of what
/// [`Naming::single_playlist`] and [`Naming::single_segment`] write; `tail`
/// is `""` for a playlist stem and `_<UTC>` for a segment stem.
pub fn parse_user_stream(name: &str) -> Option<(&str, Media, TrackType, &str)> {
    let rest = name.strip_prefix("__UserId_s_")?;
    let (user, rest) = rest.split_once("__UserId_e_")?;
    let (media, rest) = rest.split_once('_')?;
    let (track_type, tail) = rest.split_at(rest.find('_').unwrap_or(rest.len()));
    Some((
        user,
        Media::parse(media)?,
        TrackType::parse(track_type)?,
        tail,
    ))
}

/// Where a task's files live and how they are named.
#[derive(Debug, Clone)]
pub struct Naming {
    /// `<Prefix>/<TaskId>/`, with the prefix folders from FileNamePrefix.
    folder: String,
    /// `<SdkAppId>_<RoomId>`, with `ha<n>_` in front after a failover.
    stem: String,
}

impl Naming {
    pub fn new(prefix: &[String], task_id: &str, sdk_app_id: u32, room: &RoomId, ha: u8) -> Self {
        let mut folder = String::new();
        for p in prefix {
            folder.push_str(p);
            folder.push('/');
        }
        folder.push_str(task_id);
        folder.push('/');
        let room = match room {
            RoomId::Int(n) => n.to_string(),
            RoomId::Str(s) => encode_id(s),
        };
        let ha = if ha > 0 {
            format!("ha{ha}_")
        } else {
            String::new()
        };
        Self {
            folder,
            stem: format!("{ha}{sdk_app_id}_{room}"),
        }
    }

    fn single_base(&self, user_id: &str, media: Media, ty: TrackType) -> String {
        format!(
            "{}__UserId_s_{}__UserId_e_{}_{}",
            self.stem,
            encode_id(user_id),
            media.as_str(),
            ty.as_str()
        )
    }

    /// The object key of a file name in this task's folder.
    pub fn key(&self, file_name: &str) -> String {
        format!("{}{file_name}", self.folder)
    }

    pub fn single_playlist(&self, user_id: &str, media: Media, ty: TrackType) -> String {
        format!("{}.m3u8", self.single_base(user_id, media, ty))
    }

    pub fn single_segment(
        &self,
        user_id: &str,
        media: Media,
        ty: TrackType,
        start: SystemTime,
    ) -> String {
        segment_name(&self.single_base(user_id, media, ty), unix_ms(start))
    }

    /// `index` 0 = not split (no suffix).
    pub fn single_mp4(&self, user_id: &str, media: Media, index: u32) -> String {
        let base = format!(
            "{}__UserId_s_{}__UserId_e_{}",
            self.stem,
            encode_id(user_id),
            media.as_str()
        );
        if index == 0 {
            format!("{base}.mp4")
        } else {
            format!("{base}_{index}.mp4")
        }
    }

    pub fn mixed_playlist(&self) -> String {
        format!("{}.m3u8", self.stem)
    }

    pub fn mixed_segment(&self, start: SystemTime) -> String {
        segment_name(&self.stem, unix_ms(start))
    }

    pub fn mixed_mp4(&self, index: u32) -> String {
        if index == 0 {
            format!("{}.mp4", self.stem)
        } else {
            format!("{}_{index}.mp4", self.stem)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn the_spec_example_user_id() {
        assert_eq!(encode_id("1686119"), "MTY4NjExOQ..");
        assert_eq!(decode_id("MTY4NjExOQ..").as_deref(), Some("1686119"));
        // `/` and `=` replaced; `+` kept (standard alphabet).
        assert_eq!(encode_id("\u{ff}\u{ff}?"), "w7-Dvz8.");
        assert_eq!(
            decode_id(&encode_id("用户 room/1")).as_deref(),
            Some("用户 room/1")
        );
    }

    #[test]
    fn utc_is_17_digits_in_utc() {
        // 2033-05-31 09:45:51.825 UTC, the spec's example segment time.
        assert_eq!(utc17(at(2_001_145_551_825)), "20330531094551825");
        assert_eq!(utc17(at(5)), "19700101000000005");
    }

    #[test]
    fn golden_single_stream_names() {
        let n = Naming::new(&[], "task1", 1_400_123_456, &RoomId::Int(12345), 0);
        assert_eq!(
            n.key(&n.single_playlist("1686119", Media::Main, TrackType::Video)),
            "task1/1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_video.m3u8"
        );
        assert_eq!(
            n.single_segment(
                "1686119",
                Media::Main,
                TrackType::Video,
                at(2_001_145_551_825)
            ),
            "1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_video_20330531094551825.ts"
        );
        assert_eq!(
            n.single_playlist("1686119", Media::Aux, TrackType::Audio),
            "1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_aux_audio.m3u8"
        );
        assert_eq!(
            n.single_mp4("1686119", Media::Main, 0),
            "1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_main.mp4"
        );
        assert_eq!(
            n.single_mp4("1686119", Media::Main, 2),
            "1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_2.mp4"
        );
        assert_eq!(
            n.single_playlist("1686119", Media::Main, TrackType::AudioVideo),
            "1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_av.m3u8"
        );
    }

    #[test]
    fn golden_mixed_names_prefix_string_rooms_and_ha() {
        let prefix = vec!["prefix1".to_owned(), "prefix2".to_owned()];
        let n = Naming::new(
            &prefix,
            "t9",
            1_400_000_001,
            &RoomId::Str("room a".into()),
            0,
        );
        assert_eq!(
            n.key(&n.mixed_playlist()),
            "prefix1/prefix2/t9/1400000001_cm9vbSBh.m3u8"
        );
        assert_eq!(
            n.mixed_segment(at(5)),
            "1400000001_cm9vbSBh_19700101000000005.ts"
        );
        assert_eq!(n.mixed_mp4(0), "1400000001_cm9vbSBh.mp4");
        assert_eq!(n.mixed_mp4(1), "1400000001_cm9vbSBh_1.mp4");
        let ha = Naming::new(&prefix, "t9", 1_400_000_001, &RoomId::Int(7), 1);
        assert_eq!(
            ha.key(&ha.mixed_playlist()),
            "prefix1/prefix2/t9/ha1_1400000001_7.m3u8"
        );
        // A string room "7" is encoded; the integer room 7 is not.
        let s7 = Naming::new(&[], "t", 1, &RoomId::Str("7".into()), 0);
        assert_eq!(s7.mixed_playlist(), "1_Nw...m3u8");
    }
}
