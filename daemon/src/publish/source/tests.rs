//! Tests of the synthetic source against real decoders: OpenH264's decoder
//! for the video and libopus's decoder for the tone.

use super::*;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;

const NAL_NON_IDR_SLICE: u8 = 1;

fn video(width: u32, height: u32, pattern: Pattern, color: Rgb, interval: u32) -> VideoConfig {
    VideoConfig {
        width,
        height,
        fps: 15,
        bitrate_bps: 500_000,
        label: "alice_01".to_owned(),
        color,
        pattern,
        keyframe_interval_frames: interval,
        sync_marks: None,
    }
}

/// Media time of frame `n` at `fps`.
fn at(n: u64, fps: u32) -> Duration {
    Duration::from_nanos(n * 1_000_000_000 / u64::from(fps))
}

fn encode(cfg: VideoConfig, count: u64) -> Vec<EncodedVideoFrame> {
    let fps = cfg.fps;
    let mut src = VideoSource::new(cfg).expect("valid test config");
    (0..count)
        .map(|n| src.next_frame(at(n, fps)).expect("encode"))
        .collect()
}

/// A decoded picture with tightly packed planes.
struct Picture {
    width: usize,
    height: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl Picture {
    fn yuv_at(&self, x: usize, y: usize) -> Yuv {
        let c = (y / 2) * (self.width / 2) + x / 2;
        Yuv {
            y: self.y[y * self.width + x],
            u: self.u[c],
            v: self.v[c],
        }
    }
}

/// Decodes each access unit separately, as a receiver would, and requires
/// a picture from every one.
fn decode(frames: &[EncodedVideoFrame]) -> Vec<Picture> {
    let mut decoder = Decoder::new().expect("decoder");
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let pic = decoder
                .decode(&f.data)
                .unwrap_or_else(|e| panic!("frame {i} failed to decode: {e}"))
                .unwrap_or_else(|| panic!("frame {i} gave no picture"));
            let (w, h) = pic.dimensions();
            let (sy, su, sv) = pic.strides();
            let plane = |data: &[u8], stride: usize, w: usize, h: usize| {
                (0..h)
                    .flat_map(|r| data[r * stride..r * stride + w].to_vec())
                    .collect()
            };
            Picture {
                width: w,
                height: h,
                y: plane(pic.y(), sy, w, h),
                u: plane(pic.u(), su, w / 2, h / 2),
                v: plane(pic.v(), sv, w / 2, h / 2),
            }
        })
        .collect()
}

fn nal_types(au: &[u8]) -> Vec<u8> {
    nal_units(au).filter_map(nal_type).collect()
}

fn assert_close(got: Yuv, want: Yuv, tolerance: u8, what: &str) {
    let ok = got.y.abs_diff(want.y) <= tolerance
        && got.u.abs_diff(want.u) <= tolerance
        && got.v.abs_diff(want.v) <= tolerance;
    assert!(
        ok,
        "{what}: decoded {got:?}, expected {want:?} ±{tolerance}"
    );
}

#[test]
fn h264_decodes_with_idr_and_parameter_sets_every_interval() {
    // 180 is not a multiple of 16: also checks the encoder's cropping.
    let interval = 10;
    let frames = encode(
        video(320, 180, Pattern::Bars, Rgb(10, 200, 30), interval),
        35,
    );
    let pictures = decode(&frames);
    assert_eq!(pictures.len(), 35);

    for (i, (f, pic)) in frames.iter().zip(&pictures).enumerate() {
        assert_eq!((pic.width, pic.height), (320, 180), "frame {i}");
        assert_eq!((f.width, f.height), (320, 180));
        assert!(f.data.starts_with(&[0, 0, 0, 1]), "frame {i} not Annex-B");
        assert_eq!(f.pts_90khz, i as u64 * 6000, "15 fps is 6000 ticks");

        let types = nal_types(&f.data);
        let expect_idr = i % interval as usize == 0;
        assert_eq!(f.keyframe, expect_idr, "frame {i}: {types:?}");
        if expect_idr {
            let pos = |t| types.iter().position(|x| *x == t);
            let (sps, pps, idr) = (pos(NAL_SPS), pos(NAL_PPS), pos(NAL_IDR));
            assert!(
                matches!((sps, pps, idr), (Some(s), Some(p), Some(d)) if s < p && p < d),
                "frame {i}: IDR must be preceded by SPS and PPS: {types:?}"
            );
            assert!(!types.contains(&NAL_NON_IDR_SLICE));
        } else {
            assert!(types.contains(&NAL_NON_IDR_SLICE), "frame {i}: {types:?}");
            assert!(!types
                .iter()
                .any(|t| matches!(*t, NAL_IDR | NAL_SPS | NAL_PPS)));
        }
    }
}

#[test]
fn stream_is_constrained_baseline() {
    let mut src =
        VideoSource::new(video(320, 180, Pattern::Bars, Rgb(0, 0, 0), 30)).expect("config");
    assert_eq!(
        src.profile_level_id(),
        None,
        "known only after the first frame"
    );
    src.next_frame(Duration::ZERO).expect("encode");
    let [profile, constraints, level] = src.profile_level_id().expect("SPS seen");
    assert_eq!(profile, 66, "baseline profile_idc");
    // constraint_set0 and constraint_set1: baseline that main-profile
    // decoders accept, i.e. constrained baseline (profile-level-id 42c0xx).
    assert_eq!(constraints & 0xc0, 0xc0, "constraints {constraints:#04x}");
    assert!(level >= 10, "level_idc {level}");
}

#[test]
fn force_keyframe_makes_an_idr_and_restarts_the_cadence() {
    let mut src =
        VideoSource::new(video(160, 90, Pattern::Bars, Rgb(1, 2, 3), 10)).expect("config");
    let mut frames = Vec::new();
    for n in 0..26 {
        if n == 4 {
            src.force_keyframe();
        }
        frames.push(src.next_frame(at(n, 15)).expect("encode"));
    }
    let idrs: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.keyframe)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(idrs, [0, 4, 14, 24]);
    for i in idrs {
        let types = nal_types(&frames[i].data);
        assert!(
            types.starts_with(&[NAL_SPS, NAL_PPS]),
            "frame {i}: {types:?}"
        );
    }
    // A receiver joining at the forced keyframe decodes from there on.
    assert_eq!(decode(&frames[4..]).len(), 22);
    assert_eq!(src.frames_encoded(), 26);
}

#[test]
fn solid_pattern_decodes_to_the_configured_colour() {
    let colours = [
        Rgb(220, 40, 40),
        Rgb(30, 160, 90),
        Rgb(40, 60, 200),
        Rgb(128, 128, 128),
        Rgb(250, 220, 30),
    ];
    for colour in colours {
        let want = colour.to_yuv601();
        let frames = encode(video(320, 180, Pattern::Solid, colour, 10), 12);
        let pictures = decode(&frames);
        // The first IDR, a P frame and the P frame right after the second
        // IDR; the centre and points well away from the corner plate.
        for i in [0, 5, 11] {
            let pic = &pictures[i];
            for (x, y) in [(160, 90), (240, 135), (300, 20), (20, 170)] {
                assert_close(
                    pic.yuv_at(x, y),
                    want,
                    3,
                    &format!("{colour} frame {i} at ({x},{y})"),
                );
            }
        }
    }
}

#[test]
fn bars_pattern_moves_between_frames() {
    let frames = encode(video(320, 180, Pattern::Bars, Rgb(200, 0, 0), 30), 3);
    let pictures = decode(&frames);
    for pair in pictures.windows(2) {
        let changed = pair[0]
            .y
            .iter()
            .zip(&pair[1].y)
            .filter(|(a, b)| a.abs_diff(**b) > 24)
            .count();
        assert!(
            changed > 320 * 180 / 50,
            "only {changed} luma samples changed"
        );
    }
    // The bottom band is the base colour, so bars publishers can be told
    // apart by colour too.
    assert_close(
        pictures[0].yuv_at(40, 175),
        Rgb(200, 0, 0).to_yuv601(),
        3,
        "band",
    );
}

#[test]
fn solid_pattern_still_moves_in_its_corner() {
    let frames = encode(video(320, 180, Pattern::Solid, Rgb(0, 90, 0), 30), 2);
    let pictures = decode(&frames);
    assert_ne!(pictures[0].y, pictures[1].y, "clock and marker must move");
}

#[test]
fn picture_buffer_is_reused_across_frames() {
    let mut src = VideoSource::new(video(64, 64, Pattern::Bars, Rgb(9, 9, 9), 5)).expect("config");
    src.next_frame(Duration::ZERO).expect("encode");
    let before = src.renderer.canvas().planes().0.as_ptr();
    for n in 1..12 {
        src.next_frame(at(n, 15)).expect("encode");
    }
    assert_eq!(src.renderer.canvas().planes().0.as_ptr(), before);
}

#[test]
fn parameter_sets_are_repeated_in_front_of_a_bare_idr() {
    let sps = [0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1e, 0xaa];
    let pps = [0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80];
    let idr = [0, 0, 0, 1, 0x65, 0x88, 0x84, 0x21];
    let p = [0, 0, 1, 0x41, 0x9a, 0x02];

    let mut sets = ParameterSets::default();
    let mut bare = idr.to_vec();
    assert!(matches!(
        sets.ensure_in_idr(&mut bare),
        Err(SourceError::MissingParameterSets)
    ));

    let mut full = [&sps[..], &pps, &idr].concat();
    assert!(sets.ensure_in_idr(&mut full).expect("complete IDR"));
    assert_eq!(
        full,
        [&sps[..], &pps, &idr].concat(),
        "complete AU left alone"
    );

    let mut delta = p.to_vec();
    assert!(!sets.ensure_in_idr(&mut delta).expect("P frame"));
    assert_eq!(delta, p);

    let mut bare = [&pps[..], &idr].concat();
    assert!(sets.ensure_in_idr(&mut bare).expect("repaired"));
    assert_eq!(bare, [&sps[..], &pps, &idr].concat());
}

#[test]
fn nal_splitting_keeps_start_codes_with_their_units() {
    let stream = [
        0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 0,
    ];
    let units: Vec<&[u8]> = nal_units(&stream).collect();
    assert_eq!(
        units,
        [
            &[0, 0, 0, 1, 0x67, 1, 2][..],
            &[0, 0, 1, 0x68, 3],
            &[0, 0, 0, 1, 0x65, 0]
        ]
    );
    assert_eq!(nal_types(&stream), [7, 8, 5]);
    assert_eq!(nal_units(&[1, 2, 3]).count(), 0);
}

#[test]
fn bt601_conversion_matches_the_real_valued_matrix() {
    assert_eq!(
        Rgb(0, 0, 0).to_yuv601(),
        Yuv {
            y: 16,
            u: 128,
            v: 128
        }
    );
    assert_eq!(
        Rgb(255, 255, 255).to_yuv601(),
        Yuv {
            y: 235,
            u: 128,
            v: 128
        }
    );
    assert_eq!(
        Rgb(255, 0, 0).to_yuv601(),
        Yuv {
            y: 81,
            u: 90,
            v: 240
        }
    );
    for r in (0..=255).step_by(15) {
        for g in (0..=255).step_by(17) {
            for b in (0..=255).step_by(51) {
                let (fr, fg, fb) = (f64::from(r), f64::from(g), f64::from(b));
                let y = 16.0 + (65.481 * fr + 128.553 * fg + 24.966 * fb) / 255.0;
                let u = 128.0 + (-37.797 * fr - 74.203 * fg + 112.0 * fb) / 255.0;
                let v = 128.0 + (112.0 * fr - 93.786 * fg - 18.214 * fb) / 255.0;
                let got = Rgb(r as u8, g as u8, b as u8).to_yuv601();
                for (code, exact) in [(got.y, y), (got.u, u), (got.v, v)] {
                    assert!((f64::from(code) - exact).abs() <= 0.5 + 1e-9, "{r},{g},{b}");
                }
            }
        }
    }
}

#[test]
fn colours_and_patterns_parse() {
    assert_eq!("#ff8000".parse::<Rgb>().expect("hex"), Rgb(255, 128, 0));
    assert_eq!("00A0fF".parse::<Rgb>().expect("hex"), Rgb(0, 160, 255));
    assert_eq!(Rgb(1, 2, 255).to_string(), "#0102ff");
    for bad in ["", "#12345", "#1234567", "#12345g", "#ééé"] {
        assert!(
            matches!(bad.parse::<Rgb>(), Err(SourceError::InvalidColor(_))),
            "{bad:?}"
        );
    }
    assert_eq!("Solid".parse::<Pattern>().expect("solid"), Pattern::Solid);
    assert_eq!("bars".parse::<Pattern>().expect("bars"), Pattern::Bars);
    assert!(matches!(
        "zebra".parse::<Pattern>(),
        Err(SourceError::UnknownPattern(_))
    ));
}

#[test]
fn video_config_validation() {
    let ok = VideoConfig::default();
    ok.validate().expect("default is valid");
    let with = |f: &dyn Fn(&mut VideoConfig)| {
        let mut c = ok.clone();
        f(&mut c);
        c.validate()
    };
    for (w, h) in [
        (16, 16),
        (3840, 2160),
        (2160, 3840),
        (1280, 720),
        (18, 3840),
    ] {
        with(&|c| (c.width, c.height) = (w, h)).unwrap_or_else(|e| panic!("{w}x{h}: {e}"));
    }
    for (w, h) in [
        (641, 360),
        (640, 361),
        (14, 360),
        (0, 0),
        (3842, 2160),
        (3840, 2162),
        (2400, 2400),
    ] {
        let err = with(&|c| (c.width, c.height) = (w, h)).expect_err("bad size");
        assert!(
            matches!(err, SourceError::InvalidDimensions { width, height } if (width, height) == (w, h))
        );
        assert!(err.to_string().contains(&format!("{w}x{h}")), "{err}");
        assert!(err.is_config());
    }
    for fps in [0, 121] {
        let err = with(&|c| c.fps = fps).expect_err("bad fps");
        assert!(matches!(err, SourceError::InvalidFrameRate { fps: f } if f == fps));
    }
    with(&|c| c.fps = 120).expect("120 fps");
    with(&|c| c.fps = 1).expect("1 fps");
    assert!(matches!(
        with(&|c| c.bitrate_bps = 0),
        Err(SourceError::InvalidVideoBitrate { bps: 0 })
    ));
    assert!(matches!(
        with(&|c| c.keyframe_interval_frames = 0),
        Err(SourceError::InvalidKeyframeInterval)
    ));
    with(&|c| c.keyframe_interval_frames = 1).expect("all-IDR");
    with(&|c| c.label = "ünïcødé ✓ and a very long name indeed".into()).expect("any label");

    // The constructor validates too.
    let err = VideoSource::new(VideoConfig { width: 99, ..ok })
        .err()
        .expect("odd width");
    assert!(matches!(
        err,
        SourceError::InvalidDimensions { width: 99, .. }
    ));
}

#[test]
fn audio_config_validation() {
    let ok = AudioConfig::default();
    ok.validate().expect("default is valid");
    let with = |f: &dyn Fn(&mut AudioConfig)| {
        let mut c = ok.clone();
        f(&mut c);
        c.validate()
    };
    for rate in [44_100, 16_000, 0] {
        assert!(matches!(
            with(&|c| c.sample_rate = rate),
            Err(SourceError::InvalidSampleRate { .. })
        ));
    }
    for ch in [0, 3] {
        assert!(matches!(
            with(&|c| c.channels = ch),
            Err(SourceError::InvalidChannels { .. })
        ));
    }
    with(&|c| c.channels = 2).expect("stereo");
    for hz in [0.0, -440.0, 24_000.0, f32::NAN, f32::INFINITY] {
        assert!(
            matches!(
                with(&|c| c.frequency_hz = hz),
                Err(SourceError::InvalidFrequency { .. })
            ),
            "{hz}"
        );
    }
    for bps in [0, 5_999, 510_001] {
        assert!(matches!(
            with(&|c| c.bitrate_bps = bps),
            Err(SourceError::InvalidAudioBitrate { .. })
        ));
    }
    let err = AudioSource::new(AudioConfig { channels: 5, ..ok })
        .err()
        .expect("5 channels");
    assert!(err.is_config() && err.to_string().contains('5'), "{err}");
}

/// Decodes `packets` packets of tone and returns channel 0, after dropping
/// the first 100 ms (codec start-up and look-ahead).
fn decode_tone(cfg: &AudioConfig, packets: usize) -> Vec<f32> {
    let mut src = AudioSource::new(cfg.clone()).expect("config");
    let channels = if cfg.channels == 1 {
        opus::Channels::Mono
    } else {
        opus::Channels::Stereo
    };
    let mut decoder = opus::Decoder::new(48_000, channels).expect("decoder");
    let ch = usize::from(cfg.channels);
    let mut out = Vec::new();
    let mut buf = vec![0f32; 5760 * ch];
    for i in 0..packets {
        let frame = src.next_frame().expect("encode");
        assert_eq!(frame.pts_48khz, i as u64 * 960);
        assert_eq!(frame.samples, 960);
        assert!(
            !frame.data.is_empty() && frame.data.len() < 1500,
            "{} bytes",
            frame.data.len()
        );
        let n = decoder
            .decode_float(&frame.data, &mut buf, false)
            .expect("decode");
        assert_eq!(n, 960, "packet {i} is not 20 ms");
        if ch == 2 {
            let (l, r): (Vec<f32>, Vec<f32>) =
                buf[..n * 2].chunks_exact(2).map(|s| (s[0], s[1])).unzip();
            let diff = l
                .iter()
                .zip(&r)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 0.05, "channels differ by {diff}");
        }
        out.extend(buf[..n * ch].iter().step_by(ch));
    }
    out.split_off(4800)
}

/// Power of `freq` in `x` (Goertzel), normalised so a full-scale sine gives
/// about 1/4.
fn goertzel(x: &[f32], freq: f64) -> f64 {
    let w = TAU * freq / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f64, 0f64);
    for &v in x {
        let s = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (x.len() as f64).powi(2)
}

#[test]
fn opus_tone_has_the_configured_frequency_and_level() {
    for (channels, hz) in [(1u8, 440.0f32), (2, 1000.0), (1, 3150.0)] {
        let cfg = AudioConfig {
            channels,
            frequency_hz: hz,
            ..AudioConfig::default()
        };
        let pcm = decode_tone(&cfg, 60);
        let seconds = pcm.len() as f64 / 48_000.0;

        // Frequency from rising zero crossings.
        let rising = pcm.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        let measured = rising as f64 / seconds;
        let err = (measured - f64::from(hz)).abs() / f64::from(hz);
        assert!(err < 0.02, "{hz} Hz tone measured at {measured:.1} Hz");

        // And it dominates: far more energy at the tone than a bit off it.
        let on = goertzel(&pcm, f64::from(hz));
        for off in [0.7, 1.3, 2.0] {
            let p = goertzel(&pcm, f64::from(hz) * off);
            assert!(on > 100.0 * p, "{hz} Hz: {on:e} vs {p:e} at {off}×");
        }

        // -12 dBFS peak is about 0.178 RMS; allow ±1.5 dB for the codec.
        let rms =
            (pcm.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt();
        let db = 20.0 * (rms / (TONE_AMPLITUDE / 2f64.sqrt())).log10();
        assert!(
            db.abs() < 1.5,
            "{hz} Hz: level off by {db:.2} dB (rms {rms:.4})"
        );
    }
}

#[test]
fn tone_phase_is_continuous_across_packets() {
    let cfg = AudioConfig {
        channels: 2,
        frequency_hz: 997.0,
        ..AudioConfig::default()
    };
    let mut src = AudioSource::new(cfg).expect("config");
    let mut pcm = Vec::<f32>::new();
    for _ in 0..5 {
        src.next_frame().expect("encode");
        pcm.extend(src.pcm.iter().step_by(2).copied());
    }
    // `src.pcm` holds the packet just encoded; strung together, the packets
    // must be one unbroken sine starting at phase 0.
    for (n, got) in pcm.iter().enumerate() {
        let t = n as f64 / 48_000.0;
        let want = (TAU * 997.0 * t).sin() * TONE_AMPLITUDE;
        assert!((f64::from(*got) - want).abs() < 1e-4, "sample {n}");
    }
    assert!(pcm.iter().any(|s| f64::from(*s) > TONE_AMPLITUDE * 0.99));
}

/// Render+encode speed, single thread. Run with
/// `cargo test -p kiroku --release --lib publish::source::tests::speed -- --ignored --nocapture`.
#[test]
#[ignore = "timing measurement, run explicitly in release mode"]
fn speed() {
    for (w, h, fps, bps) in [(640, 360, 15, 600_000), (1280, 720, 30, 2_000_000)] {
        let cfg = VideoConfig {
            width: w,
            height: h,
            fps,
            bitrate_bps: bps,
            keyframe_interval_frames: fps * 2,
            ..VideoConfig::default()
        };
        let frames = 300u64;
        let mut renderer = pattern::Renderer::new(w, h, cfg.pattern, cfg.color, &cfg.label);
        let start = std::time::Instant::now();
        for n in 0..frames {
            renderer.render(at(n, fps));
        }
        let render = start.elapsed();

        let mut src = VideoSource::new(cfg).expect("config");
        let start = std::time::Instant::now();
        let mut bytes = 0;
        for n in 0..frames {
            bytes += src.next_frame(at(n, fps)).expect("encode").data.len();
        }
        let total = start.elapsed();
        let kbps = bytes as f64 * 8.0 / (frames as f64 / f64::from(fps)) / 1000.0;
        println!(
            "{w}x{h}@{fps}: render {:.0} fps ({:.2} ms), render+encode {:.0} fps ({:.2} ms), {kbps:.0} kbit/s",
            frames as f64 / render.as_secs_f64(),
            render.as_secs_f64() * 1000.0 / frames as f64,
            frames as f64 / total.as_secs_f64(),
            total.as_secs_f64() * 1000.0 / frames as f64,
        );
    }
    let mut audio = AudioSource::new(AudioConfig::default()).expect("config");
    let start = std::time::Instant::now();
    for _ in 0..500 {
        audio.next_frame().expect("encode");
    }
    println!(
        "opus: {:.0} packets/s",
        500.0 / start.elapsed().as_secs_f64()
    );
}
