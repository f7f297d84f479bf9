//! Checks a WHIP offer before it reaches str0m, so that an unusable offer
//! gets a specific 422 ("no H.264 video in the offer …") instead of an
//! answer that silently rejects every m-line. Pure text inspection of the
//! SDP's media sections.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferSummary {
    pub audio: bool,
    pub video: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// 400: not an SDP at all.
    #[error("the body is not an SDP offer: {0}")]
    Malformed(String),
    /// 422: an SDP kiroku cannot record.
    #[error("{0}")]
    Unusable(String),
}

struct Section {
    kind: String,
    codecs: Vec<(String, String)>, // (pt, "name/clock[/ch]")
    fmtp: Vec<(String, String)>,   // (pt, params)
    direction: &'static str,
}

fn sections(sdp: &str) -> Result<Vec<Section>, OfferError> {
    let mut lines = sdp.lines().map(str::trim_end).filter(|l| !l.is_empty());
    match lines.next() {
        Some("v=0") => {}
        _ => return Err(OfferError::Malformed("it must start with v=0".into())),
    }
    let mut out: Vec<Section> = Vec::new();
    let mut session_direction = "sendrecv";
    for line in lines {
        if line.len() < 2 || line.as_bytes()[1] != b'=' {
            return Err(OfferError::Malformed(format!(
                "`{}` is not an SDP line",
                line.chars().take(40).collect::<String>()
            )));
        }
        if let Some(m) = line.strip_prefix("m=") {
            let kind = m.split(' ').next().unwrap_or("").to_owned();
            out.push(Section {
                kind,
                codecs: Vec::new(),
                fmtp: Vec::new(),
                direction: session_direction,
            });
            continue;
        }
        let dir = match line {
            "a=sendrecv" => Some("sendrecv"),
            "a=sendonly" => Some("sendonly"),
            "a=recvonly" => Some("recvonly"),
            "a=inactive" => Some("inactive"),
            _ => None,
        };
        match (out.last_mut(), dir) {
            (None, Some(d)) => session_direction = d,
            (Some(s), Some(d)) => s.direction = d,
            (Some(s), None) => {
                if let Some(rest) = line.strip_prefix("a=rtpmap:") {
                    if let Some((pt, codec)) = rest.split_once(' ') {
                        s.codecs.push((pt.to_owned(), codec.to_ascii_lowercase()));
                    }
                } else if let Some(rest) = line.strip_prefix("a=fmtp:") {
                    if let Some((pt, params)) = rest.split_once(' ') {
                        s.fmtp.push((pt.to_owned(), params.to_ascii_lowercase()));
                    }
                }
            }
            (None, None) => {}
        }
    }
    Ok(out)
}

fn sends(s: &Section) -> bool {
    matches!(s.direction, "sendrecv" | "sendonly")
}

fn has_h264_mode1(s: &Section) -> bool {
    s.codecs.iter().any(|(pt, c)| {
        c.starts_with("h264/90000")
            && s.fmtp.iter().any(|(fpt, p)| {
                fpt == pt && p.split(';').any(|kv| kv.trim() == "packetization-mode=1")
            })
    })
}

fn offered_names(s: &Section) -> String {
    let mut names: Vec<String> = s
        .codecs
        .iter()
        .map(|(_, c)| c.split('/').next().unwrap_or("").to_ascii_uppercase())
        .filter(|n| {
            !matches!(
                n.as_str(),
                "RTX" | "RED" | "ULPFEC" | "FLEXFEC-03" | "CN" | "TELEPHONE-EVENT"
            )
        })
        .collect();
    names.dedup();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Checks an offer for the main stream (`aux = false`: camera + microphone)
/// or the aux stream (`aux = true`: screen share video).
pub fn check(sdp: &str, aux: bool) -> Result<OfferSummary, OfferError> {
    let secs = sections(sdp)?;
    let media: Vec<&Section> = secs
        .iter()
        .filter(|s| s.kind == "audio" || s.kind == "video")
        .collect();
    if media.is_empty() {
        return Err(OfferError::Unusable(
            "the offer has no audio or video section".into(),
        ));
    }
    let videos: Vec<&&Section> = media
        .iter()
        .filter(|s| s.kind == "video" && sends(s))
        .collect();
    let audios: Vec<&&Section> = media
        .iter()
        .filter(|s| s.kind == "audio" && sends(s))
        .collect();
    if videos.len() > 1 || audios.len() > 1 {
        return Err(OfferError::Unusable(
            "the offer sends more than one audio or video track: a WHIP session carries at most one of each (publish screen share on /aux)".into(),
        ));
    }
    if let Some(v) = videos.first() {
        if !has_h264_mode1(v) {
            return Err(OfferError::Unusable(format!(
                "no H.264 (packetization-mode=1) video in the offer (offered: {}): kiroku records H.264 and Opus",
                offered_names(v)
            )));
        }
    }
    if let Some(a) = audios.first() {
        if !a.codecs.iter().any(|(_, c)| c.starts_with("opus/48000")) {
            return Err(OfferError::Unusable(format!(
                "no Opus audio in the offer (offered: {}): kiroku records H.264 and Opus",
                offered_names(a)
            )));
        }
    }
    if aux && videos.is_empty() {
        return Err(OfferError::Unusable(
            "an aux (screen share) offer must send H.264 video".into(),
        ));
    }
    if videos.is_empty() && audios.is_empty() {
        return Err(OfferError::Unusable(
            "the offer sends no media (every section is recvonly or inactive)".into(),
        ));
    }
    Ok(OfferSummary {
        audio: !audios.is_empty() && !aux,
        video: !videos.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdp(media: &str) -> String {
        format!("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n{media}")
    }
    const AUDIO: &str = "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n";
    const VIDEO: &str = "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";
    const VP8: &str = "m=video 9 UDP/TLS/RTP/SAVPF 96 98\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:98 VP9/90000\r\n";

    #[test]
    fn accepts_h264_and_opus() {
        assert_eq!(
            check(&sdp(&format!("{AUDIO}{VIDEO}")), false),
            Ok(OfferSummary {
                audio: true,
                video: true
            })
        );
        assert_eq!(
            check(&sdp(AUDIO), false),
            Ok(OfferSummary {
                audio: true,
                video: false
            })
        );
        assert_eq!(
            check(&sdp(VIDEO), true),
            Ok(OfferSummary {
                audio: false,
                video: true
            })
        );
    }

    #[test]
    fn names_what_is_missing() {
        let e = check(&sdp(&format!("{AUDIO}{VP8}")), false).expect_err("vp8 only");
        assert!(
            e.to_string().contains("no H.264") && e.to_string().contains("VP8, VP9"),
            "{e}"
        );
        let pcmu = AUDIO.replace("a=rtpmap:111 opus/48000/2\r\n", "");
        let e = check(&sdp(&pcmu), false).expect_err("no opus");
        assert!(
            e.to_string().contains("no Opus") && e.to_string().contains("PCMU"),
            "{e}"
        );
        let mode0 = VIDEO.replace("packetization-mode=1", "packetization-mode=0");
        assert!(check(&sdp(&mode0), false)
            .expect_err("mode 0")
            .to_string()
            .contains("packetization-mode=1"));
        assert!(matches!(
            check(&sdp(AUDIO), true),
            Err(OfferError::Unusable(_))
        ));
        let recv = AUDIO.replace("a=sendonly", "a=recvonly");
        assert!(check(&sdp(&recv), false)
            .expect_err("recvonly")
            .to_string()
            .contains("sends no media"));
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in ["", "hello", "v=0\r\nnonsense"] {
            assert!(
                matches!(check(bad, false), Err(OfferError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
