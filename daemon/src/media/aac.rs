//! Opus → AAC-LC transcoding for HLS audio (single-stream recordings keep
//! the publisher's sample rate, 48 kHz, and channel count).
//!
//! Decode with libopus (the `opus` crate); encode with `syom`, a pure-Rust
//! AAC-LC encoder (MIT). It was chosen over `fdk-aac`, whose bundled
//! Fraunhofer code is under a non-free licence without a patent grant —
//! a problem for an appliance shipped to customers. syom is young, so its
//! output is checked here by ffprobe and by decoding the tone back.
//!
//! Timeline: the first packet's RTP time anchors the AAC stream; AAC frame
//! `k` starts `k·1024` samples later, less the encoder's priming delay
//! ([`AAC_LC_PRIMING`]), so decoded sound plays at its RTP time. Missing packets (an RTP jump) are
//! filled by Opus packet-loss concealment up to 120 ms and with silence
//! beyond (up to `MAX_GAP`), so audio stays on its timeline; a longer gap
//! is the caller's discontinuity. Sans-IO: packets in, ADTS frames out.

const RATE: u32 = 48_000;
const OPUS_MAX_FRAME: usize = 5760; // 120 ms at 48 kHz
const AAC_FRAME: u64 = 1024;
const MAX_GAP_SAMPLES: u64 = 10 * RATE as u64;
/// AAC-LC encoder delay: the first 1024 decoded samples are priming
/// (syom's `EncodeInfo::priming` for LC). ADTS in TS has no edit list, so
/// presentation times are moved back by it; otherwise every recording's
/// audio would trail its video by 21 ms.
pub const AAC_LC_PRIMING: u64 = 1024;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AacError {
    #[error("Opus decoder: {0}")]
    Opus(#[from] opus::Error),
    #[error("AAC encoder: {0}")]
    Encode(#[from] syom::AacError),
    #[error("unsupported channel count {0} (1 or 2)")]
    Channels(u8),
}

/// One ADTS frame with its presentation time (90 kHz, on the caller's timeline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacFrame {
    pub adts: Vec<u8>,
    pub pts_90k: u64,
}

pub struct OpusToAac {
    channels: usize,
    decoder: opus::Decoder,
    encoder: syom::Encoder,
    pcm: Vec<f32>,
    planes: [Vec<f32>; 2],
    /// RTP (48 kHz) time of the first decoded sample.
    anchor: Option<u64>,
    /// Samples fed to the encoder so far.
    fed: u64,
    /// AAC frames emitted so far.
    emitted: u64,
}

impl OpusToAac {
    pub fn new(channels: u8, bitrate_bps: u32) -> Result<Self, AacError> {
        let (opus_ch, n) = match channels {
            1 => (opus::Channels::Mono, 1),
            2 => (opus::Channels::Stereo, 2),
            other => return Err(AacError::Channels(other)),
        };
        let opts = syom::EncodeOptions::default().with_bitrate_bps(bitrate_bps);
        Ok(Self {
            channels: n,
            decoder: opus::Decoder::new(RATE, opus_ch)?,
            encoder: syom::Encoder::new(RATE, n, &opts)?,
            pcm: vec![0.0; OPUS_MAX_FRAME * n],
            planes: [
                Vec::with_capacity(OPUS_MAX_FRAME),
                Vec::with_capacity(OPUS_MAX_FRAME),
            ],
            anchor: None,
            fed: 0,
            emitted: 0,
        })
    }

    fn pts_of(&self, frame: u64) -> u64 {
        let start48 = (self.anchor.unwrap_or(0) + frame * AAC_FRAME).saturating_sub(AAC_LC_PRIMING);
        start48 * 90_000 / u64::from(RATE)
    }

    fn feed(&mut self, samples: usize, out: &mut Vec<AacFrame>) -> Result<(), AacError> {
        for p in &mut self.planes {
            p.clear();
        }
        for i in 0..samples {
            for c in 0..self.channels {
                // syom refuses |x| > 1; the decoder can overshoot slightly.
                self.planes[c].push(self.pcm[i * self.channels + c].clamp(-1.0, 1.0));
            }
        }
        let planes: Vec<&[f32]> = self.planes[..self.channels]
            .iter()
            .map(Vec::as_slice)
            .collect();
        let mut frames = Vec::new();
        self.encoder.feed(&planes, |f| {
            frames.push(f.au.to_vec());
            Ok(())
        })?;
        self.fed += samples as u64;
        for adts in frames {
            let pts_90k = self.pts_of(self.emitted);
            self.emitted += 1;
            out.push(AacFrame { adts, pts_90k });
        }
        Ok(())
    }

    /// One Opus packet whose RTP time (48 kHz, unwrapped) is `rtp_48k`.
    pub fn push(&mut self, packet: &[u8], rtp_48k: u64) -> Result<Vec<AacFrame>, AacError> {
        let mut out = Vec::new();
        let anchor = *self.anchor.get_or_insert(rtp_48k);
        let expected = anchor + self.fed;
        if rtp_48k < expected {
            // A late or duplicate packet: its time is already covered.
            return Ok(out);
        }
        let mut gap = (rtp_48k - expected).min(MAX_GAP_SAMPLES);
        while gap > 0 {
            let n = (gap as usize).min(OPUS_MAX_FRAME);
            // Concealment for short losses; plain silence beyond 120 ms.
            let concealed = if gap as usize <= OPUS_MAX_FRAME {
                self.decoder
                    .decode_float(&[], &mut self.pcm[..n * self.channels], false)
                    .unwrap_or(0)
            } else {
                0
            };
            self.pcm[concealed * self.channels..n * self.channels].fill(0.0);
            self.feed(n, &mut out)?;
            gap -= n as u64;
        }
        let decoded = match self.decoder.decode_float(packet, &mut self.pcm, false) {
            Ok(n) => n,
            // A corrupt packet: conceal one 20 ms frame instead.
            Err(_) => {
                let n = 960;
                self.pcm[..n * self.channels].fill(0.0);
                n
            }
        };
        self.feed(decoded, &mut out)?;
        Ok(out)
    }

    /// Flushes the encoder at the end of the stream.
    pub fn finish(mut self) -> Result<Vec<AacFrame>, AacError> {
        let mut frames = Vec::new();
        if self.fed > 0 {
            self.encoder.finish(|f| {
                frames.push(f.au.to_vec());
                Ok(())
            })?;
        }
        let mut out = Vec::new();
        for adts in frames {
            let pts_90k = self.pts_of(self.emitted);
            self.emitted += 1;
            out.push(AacFrame { adts, pts_90k });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::source::{AudioConfig, AudioSource};

    fn tone_packets(channels: u8, hz: f32, seconds: u64) -> Vec<(Vec<u8>, u64)> {
        let mut src = AudioSource::new(AudioConfig {
            channels,
            frequency_hz: hz,
            ..AudioConfig::default()
        })
        .expect("src");
        (0..seconds * 50)
            .map(|_| {
                let f = src.next_frame().expect("frame");
                (f.data, f.pts_48khz)
            })
            .collect()
    }

    #[test]
    fn the_priming_we_compensate_is_what_the_encoder_reports() {
        let opts = syom::EncodeOptions::default().with_bitrate_bps(64_000);
        let mut enc = syom::Encoder::new(48_000, 1, &opts).expect("encoder");
        let pcm = vec![0.1f32; 4096];
        enc.feed(&[&pcm], |_| Ok(())).expect("feed");
        let info = enc.finish(|_| Ok(())).expect("finish");
        assert_eq!(info.priming, AAC_LC_PRIMING);
    }

    fn goertzel(x: &[f32], rate: f32, hz: f32) -> f32 {
        let w = 2.0 * std::f32::consts::PI * hz / rate;
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &v in x {
            let s = v + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2).sqrt() / x.len() as f32
    }

    fn transcode(channels: u8, packets: &[(Vec<u8>, u64)]) -> Vec<AacFrame> {
        let base = (1u64 << 32) - 48_000; // unwrapped RTP just below 2^32
        let mut t = OpusToAac::new(channels, 64_000).expect("transcoder");
        let mut out = Vec::new();
        for (p, ts) in packets {
            out.extend(t.push(p, base + ts).expect("push"));
        }
        out.extend(t.finish().expect("finish"));
        out
    }

    #[test]
    fn the_tone_survives_and_timestamps_are_continuous() {
        let frames = transcode(2, &tone_packets(2, 1000.0, 3));
        // 3 s = 144 000 samples = 140.6 AAC frames, plus the flushed tail.
        assert!((141..=144).contains(&frames.len()), "{}", frames.len());
        for w in frames.windows(2) {
            assert_eq!(
                w[1].pts_90k - w[0].pts_90k,
                1920,
                "1024 samples at 48 kHz = 1920 ticks"
            );
        }
        assert_eq!(
            frames[0].pts_90k,
            ((1u64 << 32) - 48_000 - AAC_LC_PRIMING) * 90_000 / 48_000,
            "the first frame starts one priming delay before the first Opus sample"
        );
        let adts: Vec<u8> = frames.iter().flat_map(|f| f.adts.clone()).collect();
        assert!(syom::sniff_is_adts(&adts));
        let decoded = syom::decode_with(&adts, &syom::DecodeOptions::audio()).expect("decodes");
        assert_eq!((decoded.sample_rate, decoded.channels.len()), (48_000, 2));
        let mid = &decoded.channels[0][48_000..96_000];
        let at_tone = goertzel(mid, 48_000.0, 1000.0);
        let off_tone = goertzel(mid, 48_000.0, 1700.0);
        assert!(
            at_tone > 0.05 && at_tone > 20.0 * off_tone,
            "tone {at_tone} vs {off_tone}"
        );
    }

    #[test]
    fn lost_packets_keep_the_timeline() {
        let mut packets = tone_packets(1, 440.0, 2);
        packets.retain(|(_, ts)| !(24_000..72_000).contains(ts)); // lose 1 s
        let frames = transcode(1, &packets);
        let samples = frames.len() as u64 * 1024;
        assert!(samples >= 96_000, "the lost second is filled: {samples}");
        let corrupt = OpusToAac::new(1, 64_000)
            .expect("t")
            .push(&[0xff; 7], 0)
            .expect("no error");
        assert!(corrupt.is_empty() || corrupt.iter().all(|f| !f.adts.is_empty()));
        assert!(matches!(
            OpusToAac::new(3, 64_000),
            Err(AacError::Channels(3))
        ));
    }

    #[test]
    fn ffprobe_reads_the_aac() {
        let Some(ffprobe) = crate::media::ts::tests::tool("ffprobe") else {
            eprintln!("skipped: ffprobe not installed");
            return;
        };
        let frames = transcode(2, &tone_packets(2, 440.0, 2));
        let path = std::env::temp_dir().join(format!("kiroku-aac-{}.aac", std::process::id()));
        std::fs::write(
            &path,
            frames
                .iter()
                .flat_map(|f| f.adts.clone())
                .collect::<Vec<u8>>(),
        )
        .expect("write");
        let probe = std::process::Command::new(ffprobe)
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,profile,sample_rate,channels",
                "-of",
                "json",
            ])
            .arg(&path)
            .output()
            .expect("ffprobe");
        let _ = std::fs::remove_file(&path);
        assert!(
            probe.status.success() && probe.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&probe.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&probe.stdout).expect("json");
        let s = &v["streams"][0];
        assert_eq!(
            (s["codec_name"].as_str(), s["profile"].as_str()),
            (Some("aac"), Some("LC"))
        );
        assert_eq!(
            (s["sample_rate"].as_str(), s["channels"].as_u64()),
            (Some("48000"), Some(2))
        );
    }
}
