//! H.264 Annex-B access units: NAL iteration, key frame detection, and the
//! SPS fields kiroku needs (profile, level, coded size after cropping).
//!
//! Written here rather than taken from a crate because we need only these
//! few fields, on every frame, without allocation: the available parsers
//! either pull in a full decoder or allocate per NAL.

/// NAL unit types we look at.
pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

/// Iterates the NAL units (without start codes) of an Annex-B buffer.
pub fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = next_start(data, 0);
    std::iter::from_fn(move || {
        let (start, code_len) = pos?;
        let body = start + code_len;
        let next = next_start(data, body);
        let end = next.map_or(data.len(), |(s, _)| s);
        pos = next;
        // Trailing zero bytes belong to the next start code (4-byte form).
        let mut e = end;
        while e > body && data[e - 1] == 0 && next.is_some() {
            e -= 1;
        }
        Some(&data[body..e])
    })
    .filter(|n| !n.is_empty())
}

/// Position and length of the next `00 00 01` (or `00 00 00 01`) at or after `from`.
fn next_start(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 {
            if data[i + 2] == 1 {
                return Some((i, 3));
            }
            if data[i + 2] == 0 && i + 3 < data.len() && data[i + 3] == 1 {
                return Some((i, 4));
            }
        }
        i += 1;
    }
    None
}

pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// True when the access unit holds an IDR slice.
pub fn is_keyframe(access_unit: &[u8]) -> bool {
    nal_units(access_unit).any(|n| nal_type(n) == NAL_IDR)
}

/// An access unit as a TS stream must carry it (ISO/IEC 14496-10 §7.4.1.2.3):
/// AUD, SPS, PPS and SEI only *before* the first slice. Publishers that
/// repeat the parameter sets before every slice of a multi-slice picture
/// (GStreamer's `x264enc` + `rtph264pay config-interval=-1`) send
/// `SPS PPS IDR SPS PPS IDR`; a demuxer then sees two pictures (FFmpeg:
/// "corrupt decoded frame", a repeated timestamp). Non-VCL units after the
/// first slice are dropped, and repeats of a parameter set before it are
/// dropped too. `None` when the access unit is already in order (the
/// common case: no allocation).
pub fn normalize_access_unit(access_unit: &[u8]) -> Option<Vec<u8>> {
    let is_vcl = |t: u8| (1..=5).contains(&t);
    let mut seen_slice = false;
    let mut needs_fix = false;
    let mut seen: Vec<&[u8]> = Vec::new();
    for nal in nal_units(access_unit) {
        let t = nal_type(nal);
        if is_vcl(t) {
            seen_slice = true;
        } else if seen_slice || ((t == NAL_SPS || t == NAL_PPS) && seen.contains(&nal)) {
            needs_fix = true;
            break;
        } else if t == NAL_SPS || t == NAL_PPS {
            seen.push(nal);
        }
    }
    if !needs_fix {
        return None;
    }
    let mut out = Vec::with_capacity(access_unit.len());
    let mut seen_slice = false;
    let mut kept: Vec<&[u8]> = Vec::new();
    for nal in nal_units(access_unit) {
        let t = nal_type(nal);
        let keep = if is_vcl(t) {
            seen_slice = true;
            true
        } else if seen_slice {
            false
        } else if t == NAL_SPS || t == NAL_PPS {
            if kept.contains(&nal) {
                false
            } else {
                kept.push(nal);
                true
            }
        } else {
            true
        };
        if keep {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
    }
    Some(out)
}

/// The first SPS of an access unit, if any.
pub fn find_sps(access_unit: &[u8]) -> Option<&[u8]> {
    nal_units(access_unit).find(|n| nal_type(n) == NAL_SPS)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub width: u32,
    pub height: u32,
    /// 0..=3 (1, 4:2:0, unless a high profile says otherwise).
    pub chroma_format_idc: u8,
    /// 0..=6 (0 unless a high profile says otherwise).
    pub bit_depth_luma_minus8: u8,
    pub bit_depth_chroma_minus8: u8,
}

/// Reads Exp-Golomb coded bits from an RBSP, skipping emulation-prevention bytes.
struct BitReader<'a> {
    data: &'a [u8],
    byte: usize,
    bit: u8,
    zeros: u8,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            byte: 0,
            bit: 0,
            zeros: 0,
        }
    }

    fn bit(&mut self) -> Option<u32> {
        if self.bit == 0 {
            // Skip 0x03 after two zero bytes (emulation prevention).
            let b = *self.data.get(self.byte)?;
            if self.zeros >= 2 && b == 3 {
                self.byte += 1;
                self.zeros = 0;
            }
        }
        let b = *self.data.get(self.byte)?;
        let v = (b >> (7 - self.bit)) & 1;
        self.bit += 1;
        if self.bit == 8 {
            self.bit = 0;
            self.byte += 1;
            self.zeros = if b == 0 {
                self.zeros.saturating_add(1)
            } else {
                0
            };
        }
        Some(u32::from(v))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Some(v)
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        Some(((1u64 << zeros) - 1 + u64::from(rest)).min(u64::from(u32::MAX)) as u32)
    }

    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        Some(if k % 2 == 1 {
            (k / 2 + 1) as i32
        } else {
            -((k / 2) as i32)
        })
    }
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i32, 8i32);
    for _ in 0..size {
        if next != 0 {
            // delta_scale is the publisher's: any i32 (i64 cannot overflow).
            next = (i64::from(last) + i64::from(r.se()?)).rem_euclid(256) as i32;
        }
        last = if next == 0 { last } else { next };
    }
    Some(())
}

/// Parses an SPS NAL unit (including its 1-byte header). `None` if malformed.
pub fn parse_sps(nal: &[u8]) -> Option<SpsInfo> {
    if nal_type(nal) != NAL_SPS || nal.len() < 4 {
        return None;
    }
    let mut r = BitReader::new(&nal[1..]);
    let profile_idc = r.bits(8)? as u8;
    let constraint_flags = r.bits(8)? as u8;
    let level_idc = r.bits(8)? as u8;
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let (mut luma_minus8, mut chroma_minus8) = (0, 0);
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bits(1)?; // separate_colour_plane_flag
        }
        luma_minus8 = r.ue()?;
        chroma_minus8 = r.ue()?;
        if chroma_format_idc > 3 || luma_minus8 > 6 || chroma_minus8 > 6 {
            return None;
        }
        r.bits(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.bits(1)? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bits(1)? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = r.ue()?.checked_add(1)?;
    let height_map_units = r.ue()?.checked_add(1)?;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?; // mb_adaptive_frame_field_flag
    }
    r.bits(1)?; // direct_8x8_inference_flag
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0, 0, 0, 0);
    if r.bits(1)? == 1 {
        crop_l = r.ue()?;
        crop_r = r.ue()?;
        crop_t = r.ue()?;
        crop_b = r.ue()?;
    }
    let (sub_w, sub_h): (u32, u32) = match chroma_format_idc {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    // Every field here comes from the publisher: checked arithmetic.
    let crop_unit_y = sub_h * (2 - frame_mbs_only);
    let crop_x = sub_w.checked_mul(crop_l.checked_add(crop_r)?)?;
    let crop_y = crop_unit_y.checked_mul(crop_t.checked_add(crop_b)?)?;
    let width = width_mbs.checked_mul(16)?.checked_sub(crop_x)?;
    let height = height_map_units
        .checked_mul(16)?
        .checked_mul(2 - frame_mbs_only)?
        .checked_sub(crop_y)?;
    if width == 0 || height == 0 || width > 16_384 || height > 16_384 {
        return None;
    }
    Some(SpsInfo {
        profile_idc,
        constraint_flags,
        level_idc,
        width,
        height,
        chroma_format_idc: u8::try_from(chroma_format_idc).ok()?,
        bit_depth_luma_minus8: u8::try_from(luma_minus8).ok()?,
        bit_depth_chroma_minus8: u8::try_from(chroma_minus8).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // SPS of a 1280x720 baseline stream (x264), and of 1920x1080 high
    // profile with cropping (1088 coded rows, 8 cropped).
    const SPS_720P: [u8; 12] = [
        0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x40, 0x00, 0x00,
    ];
    const SPS_1080P_HIGH: [u8; 15] = [
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0x84, 0x00, 0x00, 0x03,
    ];

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&[0u8, 0, 0, 1][..], n].concat())
            .collect()
    }

    #[test]
    fn parameter_sets_between_slices_are_dropped() {
        let (sps, pps, sei) = (
            &SPS_720P[..],
            &[0x68u8, 0xce, 0x3c, 0x80][..],
            &[0x06u8, 5, 1, 0x80][..],
        );
        let (idr1, idr2) = (
            &[0x65u8, 0x88, 0x84, 0x01][..],
            &[0x65u8, 0x88, 0x84, 0x02][..],
        );
        // GStreamer's multi-slice key frame with the sets repeated.
        let gst = annexb(&[&[0x09, 0x10], sps, pps, sei, sps, pps, idr1, sps, pps, idr2]);
        let fixed = normalize_access_unit(&gst).expect("changed");
        let types: Vec<u8> = nal_units(&fixed).map(nal_type).collect();
        assert_eq!(
            types,
            [NAL_AUD, NAL_SPS, NAL_PPS, NAL_SEI, NAL_IDR, NAL_IDR]
        );
        assert_eq!(
            nal_units(&fixed).filter(|n| nal_type(n) == NAL_IDR).count(),
            2
        );
        assert!(
            nal_units(&fixed).any(|n| n == idr2),
            "both slices kept, in order"
        );
        // Already in order (one slice or several): untouched, no copy.
        assert_eq!(
            normalize_access_unit(&annexb(&[sps, pps, idr1, idr2])),
            None
        );
        assert_eq!(
            normalize_access_unit(&annexb(&[&[0x41u8, 0x9a, 1][..]])),
            None
        );
        // A different PPS before the slice is kept (two PPS ids).
        let pps2 = &[0x68u8, 0xce, 0x3c, 0x81][..];
        assert_eq!(
            normalize_access_unit(&annexb(&[sps, pps, pps2, idr1])),
            None
        );
    }

    /// A crafted SPS whose crop and size fields overflow 32-bit arithmetic
    /// (seen panicking a debug build): refused, never a panic.
    #[test]
    fn overflowing_sps_is_refused_without_panic() {
        let nal = hex::decode("6742001fdc000003001000000300e8").expect("hex");
        assert_eq!(parse_sps(&nal), None);
    }

    #[test]
    fn high_profile_reports_chroma_and_depths() {
        let s = parse_sps(&SPS_1080P_HIGH).expect("parses");
        assert_eq!(
            (
                s.chroma_format_idc,
                s.bit_depth_luma_minus8,
                s.bit_depth_chroma_minus8
            ),
            (1, 0, 0)
        );
        let s = parse_sps(&SPS_720P).expect("parses");
        assert_eq!(s.chroma_format_idc, 1, "baseline is 4:2:0");
    }

    #[test]
    fn parses_common_sps() {
        let s = parse_sps(&SPS_720P).expect("parses");
        assert_eq!(
            (s.profile_idc, s.level_idc, s.width, s.height),
            (66, 31, 1280, 720)
        );
        let s = parse_sps(&SPS_1080P_HIGH).expect("parses");
        assert_eq!((s.profile_idc, s.width, s.height), (100, 1920, 1080));
    }

    #[test]
    fn iterates_nal_units_and_finds_keyframes() {
        let mut au = vec![0, 0, 0, 1];
        au.extend_from_slice(&SPS_720P[..10]);
        au.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        au.extend_from_slice(&[0, 0, 1, 0x65, 0x88, 0x84]);
        let types: Vec<u8> = nal_units(&au).map(nal_type).collect();
        assert_eq!(types, vec![NAL_SPS, NAL_PPS, NAL_IDR]);
        assert!(is_keyframe(&au));
        assert_eq!(find_sps(&au).map(|s| s.len()), Some(10));
        assert!(!is_keyframe(&[0, 0, 1, 0x41, 0x9a]));
    }

    #[test]
    fn garbage_is_rejected_not_a_panic() {
        for bad in [
            &[][..],
            &[0x67],
            &[0x67, 0x42, 0, 0x1f, 0x00, 0x00],
            &[0x65, 1, 2, 3],
        ] {
            assert!(parse_sps(bad).is_none());
        }
        assert_eq!(nal_units(&[0, 0, 0, 0, 0]).count(), 0);
        assert_eq!(nal_units(&[1, 2, 3]).count(), 0);
    }

    /// Publisher-controlled SPS fields that once overflowed (a debug build
    /// panicked): a huge delta_scale in a scaling list, and the issue's
    /// example. None may panic; each must be refused or parsed.
    #[test]
    fn hostile_parameter_sets_never_panic() {
        let issue_example = [
            0x67, 0x42, 0x00, 0x1f, 0xdc, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x00, 0x03,
            0x00, 0xe8,
        ];
        let _ = parse_sps(&issue_example);
        // High profile, scaling matrix present, first list with a
        // delta_scale of ue 2^32-2 (se -2^31+1): 31 zeros, then 1, then 31
        // ones... then the rest.
        let mut bits = String::from("01100111"); // NAL header: SPS
        bits += &format!("{:08b}{:08b}{:08b}", 100, 0, 40); // profile, flags, level
        bits += "1"; // sps id 0
        bits += "010"; // chroma_format_idc 1
        bits += "1"; // luma 0
        bits += "1"; // chroma 0
        bits += "0"; // bypass
        bits += "1"; // seq_scaling_matrix_present
        bits += "1"; // list 0 present
        bits += &"0".repeat(31);
        bits += "1";
        bits += &"1".repeat(31); // ue = 2^32 - 1 - 1 + ... (huge)
        bits += &"1".repeat(64);
        while bits.len() % 8 != 0 {
            bits.push('0');
        }
        let bytes: Vec<u8> = (0..bits.len() / 8)
            .map(|i| u8::from_str_radix(&bits[i * 8..i * 8 + 8], 2).expect("bits"))
            .collect();
        let _ = parse_sps(&bytes);
        // And a few hundred thousand random ones (xorshift; deterministic).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200_000 {
            let len = 4 + (next() % 40) as usize;
            let mut nal: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            nal[0] = 0x67;
            if next() % 2 == 0 {
                nal[1] = [66, 77, 100, 110, 122, 244][(next() % 6) as usize];
            }
            let _ = parse_sps(&nal);
        }
    }
}
