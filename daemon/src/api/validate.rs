//! Raw request → validated domain types (parse, don't validate).
//!
//! Every rule of `api-schema.md` lives here, and only here: ranges, enums,
//! required fields, mutually exclusive lists, canvas bounds. Errors use
//! Tencent's families (`MissingParameter.*`, `InvalidParameter.*`,
//! `InvalidParameterValue.*`; `UnknownParameter` comes from the JSON layer)
//! and the message always names the field (as `Parent.Field`) and what is
//! allowed. Pure functions; no IO, no clock.

use super::error::{codes, ApiError};
use super::model as raw;
use crate::domain::params::*;

type R<T> = Result<T, ApiError>;

pub const MAX_SUBSCRIBE_LIST_LEN: usize = 32;
pub const MAX_LAYOUT_ENTRIES: usize = 25;
pub const MAX_WATERMARKS: usize = 25;
pub const MAX_CANVAS_SIDE: u32 = 1920;
pub const MAX_CANVAS_PIXELS: u32 = 1920 * 1080;
const MAX_URL_LEN: usize = 1024;
const MAX_TEXT_LEN: usize = 1024;

fn int(field: &str, v: Option<i64>, default: i64, lo: i64, hi: i64) -> R<i64> {
    let v = v.unwrap_or(default);
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::out_of_range(field, v, &format!("{lo}..={hi}")))
    }
}

fn required<T>(v: Option<T>, code: &'static str, field: &str) -> R<T> {
    v.ok_or_else(|| ApiError::missing(code, field))
}

fn required_text(v: Option<String>, code: &'static str, field: &str) -> R<String> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::missing(code, field)),
    }
}

fn text(field: &str, v: Option<String>, max: usize) -> R<Option<String>> {
    match v {
        Some(s) if s.chars().count() > max => Err(ApiError::new(
            codes::INVALID_VALUE,
            format!("`{field}` is longer than {max} characters"),
        )),
        Some(s) if s.is_empty() => Ok(None),
        other => Ok(other),
    }
}

pub fn sdk_app_id(v: Option<i64>) -> R<u32> {
    let v = required(v, codes::MISSING_SDK_APP_ID, "SdkAppId")?;
    match u32::try_from(v) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ApiError::new(
            codes::INVALID_SDK_APP_ID,
            format!("`SdkAppId` = {v} is not a TRTC SdkAppId (1..=4294967295)"),
        )),
    }
}

fn is_user_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// TRTC UserIds: 1..=32 bytes of `[A-Za-z0-9_-]`.
pub fn user_id(field: &str, v: &str) -> R<()> {
    if v.is_empty() || v.len() > 32 || !v.chars().all(is_user_id_char) {
        return Err(ApiError::new(
            codes::INVALID_USER_ID,
            format!(
                "`{field}` = {v:?} is not a TRTC UserId: 1 to 32 characters of A-Z a-z 0-9 _ -"
            ),
        ));
    }
    Ok(())
}

fn is_str_room_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || " !#$%&()+-:;<=.>?@[]^_{}|~,".contains(c)
}

pub fn room_id(room: Option<String>, room_id_type: Option<i64>) -> R<RoomId> {
    let room = required_text(room, codes::MISSING_ROOM_ID, "RoomId")?;
    let kind = int("RoomIdType", room_id_type, 1, 0, 1)?;
    if kind == 1 {
        match room.parse::<u32>() {
            Ok(n)
                if (1..=4_294_967_294).contains(&n)
                    && !room.starts_with('0')
                    && !room.starts_with('+') =>
            {
                Ok(RoomId::Int(n))
            }
            _ => Err(ApiError::new(
                codes::INVALID_VALUE_ROOM_ID,
                format!(
                    "`RoomId` = {room:?} is not an integer room id (1..=4294967294); \
                     for a string room set RoomIdType to 0"
                ),
            )),
        }
    } else if room.len() > 64 || !room.chars().all(is_str_room_char) {
        Err(ApiError::new(
            codes::INVALID_STR_ROOM_ID,
            format!(
                "`RoomId` = {room:?} is not a string room id: at most 64 characters of \
                 A-Z a-z 0-9, space and !#$%&()+-:;<=.>?@[]^_{{}}|~,"
            ),
        ))
    } else {
        Ok(RoomId::Str(room))
    }
}

pub fn task_id(v: Option<String>) -> R<String> {
    let v = required_text(v, codes::MISSING_TASK_ID, "TaskId")?;
    if v.len() > 128
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(ApiError::new(
            codes::INVALID_TASK_ID,
            format!("`TaskId` = {v:?} is not a TaskId issued by this appliance"),
        ));
    }
    Ok(v)
}

fn user_pattern(field: &str, v: String) -> R<UserPattern> {
    if let Some(prefix) = v.strip_suffix(".*$") {
        if !prefix.is_empty() && prefix.len() <= 32 && prefix.chars().all(is_user_id_char) {
            return Ok(UserPattern::Prefix(prefix.to_owned()));
        }
    } else if !v.is_empty() && v.len() <= 32 && v.chars().all(is_user_id_char) {
        return Ok(UserPattern::Exact(v));
    }
    Err(ApiError::new(
        codes::INVALID_USER_IDS,
        format!(
            "`{field}` has {v:?}: entries are TRTC UserIds or a prefix wildcard like \"abc.*$\""
        ),
    ))
}

fn user_list(field: &str, v: Option<Vec<String>>) -> R<Option<Vec<UserPattern>>> {
    let Some(list) = v else { return Ok(None) };
    if list.len() > MAX_SUBSCRIBE_LIST_LEN {
        return Err(ApiError::new(
            codes::INVALID_USER_IDS,
            format!(
                "`{field}` has {} entries; at most {MAX_SUBSCRIBE_LIST_LEN} are allowed",
                list.len()
            ),
        ));
    }
    if list.is_empty() {
        return Ok(None);
    }
    list.into_iter()
        .map(|u| user_pattern(field, u))
        .collect::<R<Vec<_>>>()
        .map(Some)
}

fn filter(
    parent: &str,
    allow_name: &str,
    deny_name: &str,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
) -> R<UserFilter> {
    let allow = user_list(&format!("{parent}.{allow_name}"), allow)?;
    let deny = user_list(&format!("{parent}.{deny_name}"), deny)?;
    match (allow, deny) {
        (Some(_), Some(_)) => Err(ApiError::new(
            codes::INVALID_USER_IDS,
            format!("`{parent}.{allow_name}` and `{parent}.{deny_name}` cannot both be set: use an allow-list or a deny-list"),
        )),
        (Some(a), None) => Ok(UserFilter::Allow(a)),
        (None, Some(d)) => Ok(UserFilter::Deny(d)),
        (None, None) => Ok(UserFilter::All),
    }
}

pub fn subscription(parent: &str, v: Option<raw::SubscribeStreamUserIds>) -> R<Subscription> {
    let Some(v) = v else {
        return Ok(Subscription::default());
    };
    Ok(Subscription {
        audio: filter(
            parent,
            "SubscribeAudioUserIds",
            "UnSubscribeAudioUserIds",
            v.subscribe_audio_user_ids,
            v.un_subscribe_audio_user_ids,
        )?,
        video: filter(
            parent,
            "SubscribeVideoUserIds",
            "UnSubscribeVideoUserIds",
            v.subscribe_video_user_ids,
            v.un_subscribe_video_user_ids,
        )?,
    })
}

fn record_params(v: Option<raw::RecordParams>) -> R<RecordParams> {
    let v = required(v, codes::MISSING_RECORD_PARAMS, "RecordParams")?;
    let mode = match required(
        v.record_mode,
        codes::MISSING_RECORD_MODE,
        "RecordParams.RecordMode",
    )? {
        1 => RecordMode::Single,
        2 => RecordMode::Mixed,
        other => {
            return Err(ApiError::out_of_range(
                "RecordParams.RecordMode",
                other,
                "1 (single-stream) or 2 (mixed-stream)",
            ))
        }
    };
    let max_idle = int("RecordParams.MaxIdleTime", v.max_idle_time, 30, 5, 86_400)?;
    let stream_type = match int("RecordParams.StreamType", v.stream_type, 0, 0, 2)? {
        0 => StreamType::AudioVideo,
        1 => StreamType::AudioOnly,
        _ => StreamType::VideoOnly,
    };
    let output_format = match int("RecordParams.OutputFormat", v.output_format, 0, 0, 4)? {
        0 => OutputFormat::Hls,
        1 => OutputFormat::HlsMp4,
        2 => OutputFormat::HlsAac,
        3 => OutputFormat::Mp4,
        _ => OutputFormat::Aac,
    };
    if matches!(output_format, OutputFormat::HlsAac | OutputFormat::Aac)
        && stream_type != StreamType::AudioOnly
    {
        return Err(ApiError::new(
            codes::RECORD_AUDIO_ONLY,
            "`RecordParams.OutputFormat` 2 (hls+aac) and 4 (aac) need `RecordParams.StreamType` = 1 (audio only)",
        ));
    }
    let av_merge = int("RecordParams.AvMerge", v.av_merge, 0, 0, 1)? == 1;
    let max_media_file_minutes = int(
        "RecordParams.MaxMediaFileDuration",
        v.max_media_file_duration,
        1440,
        1,
        1440,
    )?;
    let media = match int("RecordParams.MediaId", v.media_id, 0, 0, 2)? {
        0 => MediaSelection::MainAndAux,
        1 => MediaSelection::Main,
        _ => MediaSelection::Aux,
    };
    let fill_type = match int("RecordParams.FillType", v.fill_type, 0, 0, 1)? {
        0 => FillType::LastFrame,
        _ => FillType::Black,
    };
    let subscribe_ability = int(
        "RecordParams.SubscribeAbility",
        v.subscribe_ability,
        0,
        0,
        1,
    )? == 1;
    let subscription = subscription(
        "RecordParams.SubscribeStreamUserIds",
        v.subscribe_stream_user_ids,
    )?;
    Ok(RecordParams {
        mode,
        max_idle_seconds: max_idle as u32,
        stream_type,
        subscription,
        output_format,
        av_merge,
        max_media_file_minutes: max_media_file_minutes as u32,
        media,
        fill_type,
        subscribe_ability,
    })
}

fn name_part(field: &str, v: &str, max: usize) -> R<()> {
    if v.is_empty()
        || v.len() > max
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ApiError::new(
            codes::INVALID_VALUE,
            format!("`{field}` = {v:?}: 1 to {max} characters of A-Z a-z 0-9 _ -"),
        ));
    }
    Ok(())
}

/// A `CloudStorage` object as Tencent's API takes it (JSON, PascalCase),
/// validated as Create does; the error is the API's message. For `kiroku
/// doctor`, which probes an operator's bucket.
pub fn cloud_storage_json(json: &str) -> Result<CloudStorage, String> {
    let v: raw::CloudStorage = serde_json::from_str(json).map_err(|e| e.to_string())?;
    cloud_storage(v).map_err(|e| e.to_string())
}

fn cloud_storage(v: raw::CloudStorage) -> R<CloudStorage> {
    let p = "StorageParams.CloudStorage";
    let vendor = match required(v.vendor, codes::MISSING_VENDOR, &format!("{p}.Vendor"))? {
        0 => Vendor::TencentCos,
        1 => Vendor::AwsS3,
        other => {
            return Err(ApiError::out_of_range(
                &format!("{p}.Vendor"),
                other,
                "0 (Tencent COS) or 1 (AWS S3 / S3-compatible)",
            ))
        }
    };
    let region = required_text(v.region, codes::MISSING_REGION, &format!("{p}.Region"))?;
    if region.len() > 64
        || !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::new(
            codes::INVALID_VALUE,
            format!("`{p}.Region` = {region:?} is not a region name"),
        ));
    }
    let bucket = required_text(v.bucket, codes::MISSING_BUCKET, &format!("{p}.Bucket"))?;
    if bucket.len() > 255
        || !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ApiError::new(
            codes::INVALID_VALUE,
            format!("`{p}.Bucket` = {bucket:?} is not a bucket name"),
        ));
    }
    let access_key = required_text(
        v.access_key,
        codes::MISSING_ACCESS_KEY,
        &format!("{p}.AccessKey"),
    )?;
    let secret_key = required_text(
        v.secret_key,
        codes::MISSING_SECRET_KEY,
        &format!("{p}.SecretKey"),
    )?;
    let prefix = v.file_name_prefix.unwrap_or_default();
    if prefix.len() > 10 {
        return Err(ApiError::new(
            codes::INVALID_VALUE,
            format!(
                "`{p}.FileNamePrefix` has {} entries; at most 10 are allowed",
                prefix.len()
            ),
        ));
    }
    for part in &prefix {
        name_part(&format!("{p}.FileNamePrefix"), part, 64)?;
    }
    Ok(CloudStorage {
        vendor,
        region,
        bucket,
        access_key,
        secret_key,
        file_name_prefix: prefix,
    })
}

fn vod(v: raw::CloudVod, stream_type: StreamType) -> R<Vod> {
    let p = "StorageParams.CloudVod.TencentVod";
    let v = required(
        v.tencent_vod,
        codes::MISSING,
        "StorageParams.CloudVod.TencentVod",
    )?;
    let media_type = match int(&format!("{p}.MediaType"), v.media_type, 0, 0, 4)? {
        0 => VodMediaType::Mp4,
        1 => VodMediaType::Hls,
        2 => VodMediaType::Aac,
        3 => VodMediaType::HlsMp4,
        _ => VodMediaType::HlsAac,
    };
    if matches!(media_type, VodMediaType::Aac | VodMediaType::HlsAac)
        && stream_type != StreamType::AudioOnly
    {
        return Err(ApiError::new(
            codes::RECORD_AUDIO_ONLY,
            format!("`{p}.MediaType` 2 (aac) and 4 (hls+aac) need `RecordParams.StreamType` = 1 (audio only)"),
        ));
    }
    let expire = int(
        &format!("{p}.ExpireTime"),
        v.expire_time,
        0,
        0,
        i64::from(u32::MAX),
    )?;
    let class_id = int(
        &format!("{p}.ClassId"),
        v.class_id,
        0,
        0,
        i64::from(u32::MAX),
    )?;
    let sub_app_id = match v.sub_app_id {
        None | Some(0) => None,
        Some(n) => Some(int(&format!("{p}.SubAppId"), Some(n), 0, 1, i64::from(u32::MAX))? as u64),
    };
    let user_define_record_id = text(
        &format!("{p}.UserDefineRecordId"),
        v.user_define_record_id,
        64,
    )?;
    if let Some(id) = &user_define_record_id {
        name_part(&format!("{p}.UserDefineRecordId"), id, 64)?;
    }
    Ok(Vod {
        procedure: text(&format!("{p}.Procedure"), v.procedure, MAX_TEXT_LEN)?,
        expire_seconds: expire as u64,
        storage_region: text(&format!("{p}.StorageRegion"), v.storage_region, 64)?,
        class_id: class_id as u64,
        sub_app_id,
        session_context: text(
            &format!("{p}.SessionContext"),
            v.session_context,
            MAX_TEXT_LEN,
        )?,
        source_context: text(
            &format!("{p}.SourceContext"),
            v.source_context,
            MAX_TEXT_LEN,
        )?,
        media_type,
        user_define_record_id,
    })
}

fn storage(v: Option<raw::StorageParams>, stream_type: StreamType) -> R<Storage> {
    let Some(v) = v else {
        return Ok(Storage::Local);
    };
    match (v.cloud_storage, v.cloud_vod) {
        (Some(_), Some(_)) => Err(ApiError::new(
            codes::STORAGE_PARAMS,
            "`StorageParams.CloudStorage` and `StorageParams.CloudVod` cannot both be set: choose object storage or VOD",
        )),
        (Some(c), None) => Ok(Storage::Cloud(cloud_storage(c)?)),
        (None, Some(vd)) => Ok(Storage::Vod(vod(vd, stream_type)?)),
        (None, None) => Err(ApiError::missing(
            codes::MISSING_CLOUD_STORAGE,
            "StorageParams.CloudStorage (or StorageParams.CloudVod; omit StorageParams for local storage)",
        )),
    }
}

fn transcode(v: Option<raw::MixTranscodeParams>) -> R<MixTranscode> {
    let Some(v) = v else {
        return Ok(MixTranscode::default());
    };
    let video = match v.video_params {
        None => VideoParams::default(),
        Some(vp) => {
            let p = "MixTranscodeParams.VideoParams";
            let need = |x: Option<i64>, f: &str| {
                required(
                    x,
                    codes::MISSING,
                    &format!(
                        "{p}.{f} (all VideoParams fields are required when VideoParams is given)"
                    ),
                )
            };
            let (w, h) = (need(vp.width, "Width")?, need(vp.height, "Height")?);
            let (fps, bitrate, gop) = (
                need(vp.fps, "Fps")?,
                need(vp.bit_rate, "BitRate")?,
                need(vp.gop, "Gop")?,
            );
            let side = i64::from(MAX_CANVAS_SIDE);
            if !(16..=side).contains(&w)
                || !(16..=side).contains(&h)
                || w % 2 != 0
                || h % 2 != 0
                || w * h > i64::from(MAX_CANVAS_PIXELS)
            {
                return Err(ApiError::new(
                    codes::VIDEO_RESOLUTION,
                    format!("`{p}.Width`×`Height` = {w}×{h}: each side must be even, 16..=1920, and Width×Height at most 1920×1080"),
                ));
            }
            VideoParams {
                width: w as u32,
                height: h as u32,
                fps: int(&format!("{p}.Fps"), Some(fps), 0, 1, 60)? as u32,
                bitrate_bps: int(&format!("{p}.BitRate"), Some(bitrate), 0, 64_000, 8_192_000)?
                    as u32,
                gop_seconds: int(&format!("{p}.Gop"), Some(gop), 0, 1, 60)? as u32,
            }
        }
    };
    let audio = match v.audio_params {
        None => AudioParams::default(),
        Some(ap) => {
            let p = "MixTranscodeParams.AudioParams";
            let bad = |f: &str, value: i64, allowed: &str| {
                ApiError::new(
                    codes::AUDIO_ENCODE_PARAMS,
                    format!("`{p}.{f}` = {value} is not allowed: {allowed}"),
                )
            };
            let need = |x: Option<i64>, f: &str| {
                required(
                    x,
                    codes::MISSING,
                    &format!(
                        "{p}.{f} (all AudioParams fields are required when AudioParams is given)"
                    ),
                )
            };
            let sample_rate_hz = match need(ap.sample_rate, "SampleRate")? {
                1 => 48_000,
                2 => 44_100,
                3 => 16_000,
                other => {
                    return Err(bad(
                        "SampleRate",
                        other,
                        "1 (48 kHz), 2 (44.1 kHz) or 3 (16 kHz)",
                    ))
                }
            };
            let channels = match need(ap.channel, "Channel")? {
                1 => 1,
                2 => 2,
                other => return Err(bad("Channel", other, "1 (mono) or 2 (stereo)")),
            };
            let bitrate = need(ap.bit_rate, "BitRate")?;
            if !(32_000..=128_000).contains(&bitrate) {
                return Err(bad("BitRate", bitrate, "32000..=128000"));
            }
            AudioParams {
                sample_rate_hz,
                channels,
                bitrate_bps: bitrate as u32,
            }
        }
    };
    Ok(MixTranscode { video, audio })
}

/// An image URL: http(s), no whitespace, path ending in .jpg/.jpeg/.png.
fn image_url(field: &str, v: Option<String>, bad_url_code: &'static str) -> R<Option<String>> {
    let Some(url) = v.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let lower = url.to_ascii_lowercase();
    let scheme_ok = lower.starts_with("http://") || lower.starts_with("https://");
    if !scheme_ok
        || url.len() > MAX_URL_LEN
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::new(
            bad_url_code,
            format!(
                "`{field}` = {url:?} is not an http(s) URL of at most {MAX_URL_LEN} characters"
            ),
        ));
    }
    let path = lower.split(['?', '#']).next().unwrap_or_default();
    if ![".jpg", ".jpeg", ".png"].iter().any(|s| path.ends_with(s)) {
        return Err(ApiError::new(
            codes::CHECK_SUFFIX_FAILED,
            format!("`{field}` = {url:?} must end in .jpg, .jpeg or .png"),
        ));
    }
    Ok(Some(url))
}

fn colour(field: &str, v: &str) -> R<Rgb> {
    let hex = v
        .strip_prefix('#')
        .or_else(|| v.strip_prefix("0x"))
        .or_else(|| v.strip_prefix("0X"));
    if let Some(h) = hex.filter(|h| h.len() == 6 && h.chars().all(|c| c.is_ascii_hexdigit())) {
        let byte = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).unwrap_or(0);
        return Ok(Rgb(byte(0), byte(2), byte(4)));
    }
    Err(ApiError::new(
        codes::INVALID_VALUE,
        format!("`{field}` = {v:?} is not a colour: use #RRGGBB"),
    ))
}

fn render_mode(field: &str, v: Option<i64>, default: i64) -> R<RenderMode> {
    Ok(match int(field, v, default, 0, 3)? {
        0 => RenderMode::Stretch,
        1 => RenderMode::Crop,
        2 => RenderMode::Letterbox,
        _ => RenderMode::SmartStretch,
    })
}

fn media_id(field: &str, v: Option<i64>) -> R<MediaId> {
    Ok(if int(field, v, 0, 0, 1)? == 0 {
        MediaId::Main
    } else {
        MediaId::Aux
    })
}

fn font(field: &str, v: Option<String>) -> R<Font> {
    match v.as_deref() {
        None | Some("") | Some("Tencent") => Ok(Font::Tencent),
        Some("SourceHanSans") => Ok(Font::SourceHanSans),
        Some(other) => Err(ApiError::new(
            codes::INVALID_VALUE,
            format!("`{field}` = {other:?}: allowed \"Tencent\" or \"SourceHanSans\""),
        )),
    }
}

fn rect(
    field: &str,
    top: Option<i64>,
    left: Option<i64>,
    width: Option<i64>,
    height: Option<i64>,
    max: i64,
) -> R<Rect> {
    let need = |x: Option<i64>, f: &str| required(x, codes::MISSING, &format!("{field}.{f}"));
    let (t, l, w, h) = (
        need(top, "Top")?,
        need(left, "Left")?,
        need(width, "Width")?,
        need(height, "Height")?,
    );
    for (f, v) in [("Top", t), ("Left", l), ("Width", w), ("Height", h)] {
        if !(0..=max).contains(&v) {
            return Err(ApiError::out_of_range(
                &format!("{field}.{f}"),
                v,
                &format!("0..={max}"),
            ));
        }
    }
    Ok(Rect {
        top: t as u32,
        left: l as u32,
        width: w as u32,
        height: h as u32,
    })
}

fn custom_tile(i: usize, t: raw::MixLayout, canvas: &VideoParams) -> R<CustomTile> {
    let f = format!("MixLayoutParams.MixLayoutList[{i}]");
    let side = i64::from(MAX_CANVAS_SIDE);
    let r = rect(&f, t.top, t.left, t.width, t.height, side).map_err(|e| ApiError {
        code: if e.code == codes::MISSING {
            e.code
        } else {
            codes::PRESET_LAYOUT_CONFIG.into()
        },
        message: e.message,
    })?;
    if r.width == 0
        || r.height == 0
        || r.left + r.width > canvas.width
        || r.top + r.height > canvas.height
    {
        return Err(ApiError::new(
            codes::PRESET_LAYOUT_CONFIG,
            format!(
                "`{f}` (Left {}, Top {}, Width {}, Height {}) must be non-empty and inside the {}×{} canvas",
                r.left, r.top, r.width, r.height, canvas.width, canvas.height
            ),
        ));
    }
    let user_id = match t.user_id.filter(|u| !u.is_empty()) {
        Some(u) => {
            user_id(&format!("{f}.UserId"), &u)?;
            Some(u)
        }
        None => None,
    };
    Ok(CustomTile {
        rect: r,
        user_id,
        alpha: int(&format!("{f}.Alpha"), t.alpha, 0, 0, 255)? as u8,
        render_mode: render_mode(&format!("{f}.RenderMode"), t.render_mode, 1)?,
        media: media_id(&format!("{f}.MediaId"), t.media_id)?,
        layer: int(&format!("{f}.ImageLayer"), t.image_layer, 0, 0, 1000)? as u32,
        sub_background_image: image_url(
            &format!("{f}.SubBackgroundImage"),
            t.sub_background_image,
            codes::INVALID_VALUE,
        )?,
    })
}

fn watermark(i: usize, w: raw::WaterMark) -> R<Watermark> {
    let f = format!("MixLayoutParams.WaterMarkList[{i}]");
    let kind = int(&format!("{f}.WaterMarkType"), w.water_mark_type, 0, 0, 2)?;
    match kind {
        0 => {
            let img = required(
                w.water_mark_image,
                codes::MISSING,
                &format!("{f}.WaterMarkImage (WaterMarkType 0)"),
            )?;
            let g = format!("{f}.WaterMarkImage");
            let url = image_url(
                &format!("{g}.WaterMarkUrl"),
                img.water_mark_url,
                codes::WATERMARK,
            )?
            .ok_or_else(|| ApiError::missing(codes::MISSING, &format!("{g}.WaterMarkUrl")))?;
            let r = rect(&g, img.top, img.left, img.width, img.height, 2560)?;
            if r.width == 0 || r.height == 0 {
                return Err(ApiError::new(
                    codes::WATERMARK,
                    format!("`{g}` Width and Height must be at least 1"),
                ));
            }
            Ok(Watermark::Image { url, rect: r })
        }
        1 => {
            let c = required(
                w.water_mark_char,
                codes::MISSING,
                &format!("{f}.WaterMarkChar (WaterMarkType 1)"),
            )?;
            let g = format!("{f}.WaterMarkChar");
            let r = rect(&g, c.top, c.left, c.width, c.height, 2560)?;
            let chars = required_text(c.chars, codes::MISSING, &format!("{g}.Chars"))?;
            if chars.chars().count() > 256 {
                return Err(ApiError::new(
                    codes::WATERMARK,
                    format!("`{g}.Chars` is longer than 256 characters"),
                ));
            }
            let background = match c.back_ground_color.filter(|s| !s.is_empty()) {
                Some(s) => Some(colour(&format!("{g}.BackGroundColor"), &s)?),
                None => None,
            };
            Ok(Watermark::Text {
                rect: r,
                chars,
                font_size: int(&format!("{g}.FontSize"), c.font_size, 14, 1, 500)? as u32,
                font_color: match c.font_color.filter(|s| !s.is_empty()) {
                    Some(s) => colour(&format!("{g}.FontColor"), &s)?,
                    None => Rgb(255, 255, 255),
                },
                background,
                font: font(&format!("{g}.Font"), c.font)?,
            })
        }
        _ => {
            let t = required(
                w.water_mark_timestamp,
                codes::MISSING,
                &format!("{f}.WaterMarkTimestamp (WaterMarkType 2)"),
            )?;
            let g = format!("{f}.WaterMarkTimestamp");
            let pos = match int(&format!("{g}.Pos"), t.pos, 0, 0, 6)? {
                0 => TimestampPos::TopLeft,
                1 => TimestampPos::TopRight,
                2 => TimestampPos::BottomLeft,
                3 => TimestampPos::BottomRight,
                4 => TimestampPos::TopCenter,
                5 => TimestampPos::BottomCenter,
                _ => TimestampPos::Center,
            };
            Ok(Watermark::Timestamp {
                pos,
                utc_offset_hours: int(&format!("{g}.TimeZone"), t.time_zone, 8, -12, 14)? as i32,
                font: font(&format!("{g}.Font"), t.font)?,
            })
        }
    }
}

/// Validates `MixLayoutParams` against the task's canvas.
pub fn mix_layout(v: Option<raw::MixLayoutParams>, canvas: &VideoParams) -> R<MixLayout> {
    let Some(v) = v else {
        return Ok(MixLayout::default());
    };
    let p = "MixLayoutParams";
    let mode = match int(&format!("{p}.MixLayoutMode"), v.mix_layout_mode, 3, 1, 4)? {
        1 => LayoutMode::Float,
        2 => LayoutMode::ScreenShare,
        3 => LayoutMode::NineGrid,
        _ => LayoutMode::Custom,
    };
    let list = v.mix_layout_list.unwrap_or_default();
    if list.len() > MAX_LAYOUT_ENTRIES {
        return Err(ApiError::new(
            codes::PRESET_LAYOUT_CONFIG,
            format!(
                "`{p}.MixLayoutList` has {} entries; at most {MAX_LAYOUT_ENTRIES} are allowed",
                list.len()
            ),
        ));
    }
    let custom = match (mode, list.is_empty()) {
        (LayoutMode::Custom, true) => {
            return Err(ApiError::missing(
                codes::MISSING_PRESET_LAYOUT,
                "MixLayoutParams.MixLayoutList (MixLayoutMode 4)",
            ))
        }
        (LayoutMode::Custom, false) => list
            .into_iter()
            .enumerate()
            .map(|(i, t)| custom_tile(i, t, canvas))
            .collect::<R<Vec<_>>>()?,
        (_, false) => {
            return Err(ApiError::new(
                codes::PRESET_LAYOUT_CONFIG,
                format!("`{p}.MixLayoutList` is only used with MixLayoutMode 4 (custom)"),
            ))
        }
        (_, true) => Vec::new(),
    };
    let marks = v.water_mark_list.unwrap_or_default();
    if marks.len() > MAX_WATERMARKS {
        return Err(ApiError::new(
            codes::WATERMARK,
            format!(
                "`{p}.WaterMarkList` has {} entries; at most {MAX_WATERMARKS} are allowed",
                marks.len()
            ),
        ));
    }
    let watermarks = marks
        .into_iter()
        .enumerate()
        .map(|(i, w)| watermark(i, w))
        .collect::<R<Vec<_>>>()?;
    let max_resolution_user = match v.max_resolution_user_id.filter(|u| !u.is_empty()) {
        Some(u) => {
            user_id(&format!("{p}.MaxResolutionUserId"), &u)?;
            Some(u)
        }
        None => None,
    };
    let placeholder = int(
        &format!("{p}.PlaceHolderMode"),
        v.place_holder_mode,
        0,
        0,
        1,
    )? == 1;
    Ok(MixLayout {
        mode,
        custom,
        background_color: match v.back_ground_color.filter(|s| !s.is_empty()) {
            Some(s) => colour(&format!("{p}.BackGroundColor"), &s)?,
            None => Rgb(0, 0, 0),
        },
        max_resolution_user,
        max_resolution_media: media_id(&format!("{p}.MediaId"), v.media_id)?,
        background_image: image_url(
            &format!("{p}.BackgroundImageUrl"),
            v.background_image_url,
            codes::BACKGROUND_IMAGE_URL,
        )?,
        background_render_mode: render_mode(
            &format!("{p}.BackgroundImageRenderMode"),
            v.background_image_render_mode,
            1,
        )?,
        placeholder,
        placeholder_image: image_url(
            &format!("{p}.DefaultSubBackgroundImage"),
            v.default_sub_background_image,
            codes::INVALID_VALUE,
        )?,
        watermarks,
        render_mode: render_mode(&format!("{p}.RenderMode"), v.render_mode, 1)?,
        big_tile_right: int(
            &format!("{p}.MaxResolutionUserAlign"),
            v.max_resolution_user_align,
            0,
            0,
            1,
        )? == 1,
        pure_audio_disable_layout: v.pure_audio_disable_layout.unwrap_or(false),
    })
}

/// Validates a CreateCloudRecording body. UserSig verification (which needs
/// the app's key and the clock) is the caller's job.
pub fn create(req: raw::CreateCloudRecordingRequest) -> R<RecordingSpec> {
    let sdk_app_id = sdk_app_id(req.sdk_app_id)?;
    let room = room_id(req.room_id, req.room_id_type)?;
    let bot = required_text(req.user_id, codes::MISSING_USER_ID, "UserId")?;
    user_id("UserId", &bot)?;
    let bot_user_sig = required_text(req.user_sig, codes::MISSING_USER_SIG, "UserSig")?;
    if bot_user_sig.len() > 8192 {
        return Err(ApiError::new(
            codes::INVALID_USER_SIG,
            "`UserSig` is longer than 8192 characters",
        ));
    }
    let record = record_params(req.record_params)?;
    let storage = storage(req.storage_params, record.stream_type)?;
    let mix = match record.mode {
        RecordMode::Mixed => {
            let transcode = transcode(req.mix_transcode_params)?;
            let layout = mix_layout(req.mix_layout_params, &transcode.video)?;
            Some(MixSettings { transcode, layout })
        }
        RecordMode::Single => {
            for (given, name) in [
                (req.mix_transcode_params.is_some(), "MixTranscodeParams"),
                (req.mix_layout_params.is_some(), "MixLayoutParams"),
            ] {
                if given {
                    return Err(ApiError::new(
                        codes::NOT_FOR_MODE,
                        format!("`{name}` only applies to RecordMode 2 (mixed-stream); this request has RecordMode 1"),
                    ));
                }
            }
            None
        }
    };
    let resource_expired_hours =
        int("ResourceExpiredHour", req.resource_expired_hour, 72, 6, 720)? as u32;
    let private_map_key = text("PrivateMapKey", req.private_map_key, 4096)?;
    // Room permission keys are TRTC's "advanced permission control", which
    // this appliance does not enforce on publishers: refusing the key says
    // so, where accepting it would pretend to check it.
    if private_map_key.is_some() {
        return Err(ApiError::new(
            codes::INVALID_VALUE,
            "`PrivateMapKey` is not supported: this appliance does not enforce TRTC room permissions \
             (publishers are checked by UserSig, apps.user_sig_key); leave it out",
        ));
    }
    Ok(RecordingSpec {
        sdk_app_id,
        room,
        bot_user_id: bot,
        bot_user_sig,
        record,
        storage,
        mix,
        resource_expired_hours,
        private_map_key,
    })
}

/// Validates a ModifyCloudRecording body against the task it targets.
pub fn modification(
    layout: Option<raw::MixLayoutParams>,
    subscription_raw: Option<raw::SubscribeStreamUserIds>,
    task: &RecordingSpec,
) -> R<Modification> {
    let layout = match (layout, &task.mix) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ApiError::new(
                codes::NOT_FOR_MODE,
                "`MixLayoutParams` only applies to mixed-stream tasks (RecordMode 2); this task is single-stream",
            ))
        }
        (Some(l), Some(mix)) => Some(mix_layout(Some(l), &mix.transcode.video)?),
    };
    let subscription = match subscription_raw {
        None => None,
        Some(s) => Some(subscription("SubscribeStreamUserIds", Some(s))?),
    };
    Ok(Modification {
        subscription,
        layout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> R<RecordingSpec> {
        let req: raw::CreateCloudRecordingRequest = serde_json::from_value(json).expect("shape");
        create(req)
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "SdkAppId": 1400000001, "RoomId": "1234", "UserId": "bot_1", "UserSig": "sig",
            "RecordParams": {"RecordMode": 1}
        })
    }

    fn with(
        mut v: serde_json::Value,
        path: &[&str],
        value: serde_json::Value,
    ) -> serde_json::Value {
        let mut cur = &mut v;
        for key in &path[..path.len() - 1] {
            cur = cur
                .as_object_mut()
                .expect("object")
                .entry(key.to_string())
                .or_insert_with(|| serde_json::json!({}));
        }
        cur.as_object_mut()
            .expect("object")
            .insert(path[path.len() - 1].to_string(), value);
        v
    }

    fn code(v: serde_json::Value) -> String {
        match parse(v) {
            Ok(_) => "accepted".into(),
            Err(e) => e.code.into_owned(),
        }
    }

    #[test]
    fn defaults_are_applied() {
        let s = parse(base()).expect("valid");
        assert_eq!(s.room, RoomId::Int(1234));
        assert_eq!(s.record.max_idle_seconds, 30);
        assert_eq!(s.record.stream_type, StreamType::AudioVideo);
        assert_eq!(s.record.output_format, OutputFormat::Hls);
        assert_eq!(s.record.max_media_file_minutes, 1440);
        assert_eq!(s.storage, Storage::Local);
        assert_eq!(s.resource_expired_hours, 72);
        assert!(s.mix.is_none());
        let m = parse(with(base(), &["RecordParams", "RecordMode"], 2.into())).expect("valid");
        let mix = m.mix.expect("mixed has settings");
        assert_eq!(
            mix.transcode.video,
            VideoParams {
                width: 360,
                height: 640,
                fps: 15,
                bitrate_bps: 550_000,
                gop_seconds: 10
            }
        );
        assert_eq!(
            mix.transcode.audio,
            AudioParams {
                sample_rate_hz: 48_000,
                channels: 2,
                bitrate_bps: 64_000
            }
        );
        assert_eq!(mix.layout.mode, LayoutMode::NineGrid);
    }

    #[test]
    fn the_refusals_the_issue_lists() {
        assert_eq!(
            code(with(base(), &["RecordParams", "RecordMode"], 3.into())),
            codes::OUT_OF_RANGE
        );
        assert_eq!(
            code(with(base(), &["RecordParams", "RecordMode"], 0.into())),
            codes::OUT_OF_RANGE
        );
        assert_eq!(
            code(with(base(), &["RecordParams", "MaxIdleTime"], 4.into())),
            codes::OUT_OF_RANGE
        );
        assert_eq!(
            code(with(
                base(),
                &["RecordParams", "MaxIdleTime"],
                86_401.into()
            )),
            codes::OUT_OF_RANGE
        );
        assert_eq!(
            code(with(base(), &["RecordParams", "MaxIdleTime"], 5.into())),
            "accepted"
        );
        let both = with(
            with(
                base(),
                &["StorageParams", "CloudStorage"],
                serde_json::json!({"Vendor":1,"Region":"r","Bucket":"b","AccessKey":"a","SecretKey":"s"}),
            ),
            &["StorageParams", "CloudVod"],
            serde_json::json!({"TencentVod": {}}),
        );
        assert_eq!(code(both), codes::STORAGE_PARAMS);
        let mixed = with(base(), &["RecordParams", "RecordMode"], 2.into());
        let video = |w: i64, h: i64| serde_json::json!({"Width": w, "Height": h, "Fps": 15, "BitRate": 1_000_000, "Gop": 2});
        assert_eq!(
            code(with(
                mixed.clone(),
                &["MixTranscodeParams", "VideoParams"],
                video(1920, 1080)
            )),
            "accepted"
        );
        assert_eq!(
            code(with(
                mixed.clone(),
                &["MixTranscodeParams", "VideoParams"],
                video(1080, 1920)
            )),
            "accepted"
        );
        assert_eq!(
            code(with(
                mixed.clone(),
                &["MixTranscodeParams", "VideoParams"],
                video(1920, 1082)
            )),
            codes::VIDEO_RESOLUTION
        );
        assert_eq!(
            code(with(
                mixed.clone(),
                &["MixTranscodeParams", "VideoParams"],
                video(2560, 720)
            )),
            codes::VIDEO_RESOLUTION
        );
        let tiles: Vec<_> = (0..26)
            .map(|_| serde_json::json!({"Top":0,"Left":0,"Width":10,"Height":10}))
            .collect();
        let layout = serde_json::json!({"MixLayoutMode": 4, "MixLayoutList": tiles});
        assert_eq!(
            code(with(mixed.clone(), &["MixLayoutParams"], layout)),
            codes::PRESET_LAYOUT_CONFIG
        );
        let marks: Vec<_> = (0..26).map(|_| serde_json::json!({"WaterMarkType":1,"WaterMarkChar":{"Top":0,"Left":0,"Width":10,"Height":10,"Chars":"x"}})).collect();
        assert_eq!(
            code(with(
                mixed.clone(),
                &["MixLayoutParams", "WaterMarkList"],
                marks.into()
            )),
            codes::WATERMARK
        );
        // Default canvas is 360×640: a tile reaching x = 361 is outside.
        let outside = serde_json::json!({"MixLayoutMode": 4, "MixLayoutList": [{"Top":0,"Left":200,"Width":161,"Height":100}]});
        assert_eq!(
            code(with(mixed.clone(), &["MixLayoutParams"], outside)),
            codes::PRESET_LAYOUT_CONFIG
        );
        let inside = serde_json::json!({"MixLayoutMode": 4, "MixLayoutList": [{"Top":0,"Left":200,"Width":160,"Height":640}]});
        assert_eq!(code(with(mixed, &["MixLayoutParams"], inside)), "accepted");
        let lists =
            serde_json::json!({"SubscribeAudioUserIds": ["a"], "UnSubscribeAudioUserIds": ["b"]});
        assert_eq!(
            code(with(
                base(),
                &["RecordParams", "SubscribeStreamUserIds"],
                lists
            )),
            codes::INVALID_USER_IDS
        );
        let mixed_kinds = serde_json::json!({"SubscribeAudioUserIds": ["a"], "UnSubscribeVideoUserIds": ["b", "c.*$"]});
        assert_eq!(
            code(with(
                base(),
                &["RecordParams", "SubscribeStreamUserIds"],
                mixed_kinds
            )),
            "accepted"
        );
    }

    #[test]
    fn missing_fields_name_themselves() {
        let mut v = base();
        v.as_object_mut().expect("object").remove("RecordParams");
        let e = parse(v).expect_err("missing");
        assert_eq!(e.code, codes::MISSING_RECORD_PARAMS);
        assert!(e.message.contains("RecordParams"));
        let e = parse(with(base(), &["RecordParams"], serde_json::json!({}))).expect_err("missing");
        assert_eq!(e.code, codes::MISSING_RECORD_MODE);
        let e = parse(with(
            base(),
            &["StorageParams", "CloudStorage"],
            serde_json::json!({"Vendor": 0, "Region": "r"}),
        ))
        .expect_err("missing");
        assert_eq!(e.code, codes::MISSING_BUCKET);
        assert!(
            e.message.contains("StorageParams.CloudStorage.Bucket"),
            "{}",
            e.message
        );
    }

    #[test]
    fn rooms_and_users() {
        assert_eq!(
            code(with(base(), &["RoomId"], "abc".into())),
            codes::INVALID_VALUE_ROOM_ID
        );
        assert_eq!(
            code(with(base(), &["RoomId"], "4294967295".into())),
            codes::INVALID_VALUE_ROOM_ID
        );
        assert_eq!(
            code(with(base(), &["RoomId"], "0".into())),
            codes::INVALID_VALUE_ROOM_ID
        );
        let s = parse(with(
            with(base(), &["RoomId"], "room a#1".into()),
            &["RoomIdType"],
            0.into(),
        ))
        .expect("valid");
        assert_eq!(s.room, RoomId::Str("room a#1".into()));
        assert_eq!(
            code(with(
                with(base(), &["RoomId"], "é".into()),
                &["RoomIdType"],
                0.into()
            )),
            codes::INVALID_STR_ROOM_ID
        );
        assert_eq!(
            code(with(base(), &["RoomIdType"], 2.into())),
            codes::OUT_OF_RANGE
        );
        assert_eq!(
            code(with(base(), &["UserId"], "a b".into())),
            codes::INVALID_USER_ID
        );
        assert_eq!(
            code(with(base(), &["UserId"], "x".repeat(33).into())),
            codes::INVALID_USER_ID
        );
        assert_eq!(
            code(with(base(), &["SdkAppId"], 0.into())),
            codes::INVALID_SDK_APP_ID
        );
    }

    #[test]
    fn mode_specific_parameters() {
        assert_eq!(
            code(with(base(), &["MixLayoutParams"], serde_json::json!({}))),
            codes::NOT_FOR_MODE
        );
        assert_eq!(
            code(with(base(), &["RecordParams", "OutputFormat"], 4.into())),
            codes::RECORD_AUDIO_ONLY
        );
        let audio = with(base(), &["RecordParams", "StreamType"], 1.into());
        assert_eq!(
            code(with(audio, &["RecordParams", "OutputFormat"], 4.into())),
            "accepted"
        );
        let mixed = with(base(), &["RecordParams", "RecordMode"], 2.into());
        assert_eq!(
            code(with(
                mixed.clone(),
                &["MixLayoutParams", "BackgroundImageUrl"],
                "http://x/a.gif".into()
            )),
            codes::CHECK_SUFFIX_FAILED
        );
        assert_eq!(
            code(with(
                mixed.clone(),
                &["MixLayoutParams", "BackGroundColor"],
                "red".into()
            )),
            codes::INVALID_VALUE
        );
        assert_eq!(
            code(with(
                mixed.clone(),
                &["MixTranscodeParams", "AudioParams"],
                serde_json::json!({"SampleRate": 4, "Channel": 1, "BitRate": 64000})
            )),
            codes::AUDIO_ENCODE_PARAMS
        );
        assert_eq!(
            code(with(
                mixed,
                &["MixTranscodeParams", "VideoParams"],
                serde_json::json!({"Width": 640})
            )),
            codes::MISSING
        );
    }
}
