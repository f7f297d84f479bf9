//! The audio of a mixed-stream recording: every publisher's Opus audio
//! placed on the task timeline, summed, limited, and encoded as one AAC-LC
//! track.
//!
//! # Timeline
//!
//! - The mix runs at 48 kHz stereo. Mix sample `n` plays at server time
//!   `epoch_us + n / 48 kHz`; a packet whose first sample plays at `t_us`
//!   belongs at `n = round((t_us - epoch_us) · 48 / 1000)`.
//! - The output starts at the epoch and has no holes: each
//!   [`AudioMixer::advance`] extends it to the time given, with silence where
//!   no input has audio, so the track runs from the epoch even while nobody
//!   publishes. Audio from before the epoch is not recorded.
//! - AAC frame `k` at output rate `R` starts `k · 1024` samples (at `R`) after
//!   the epoch, less the encoder's priming delay ([`AAC_LC_PRIMING`]); its PTS
//!   is that instant on the recording's 90 kHz timeline ([`BASE_90K`] at the
//!   epoch), rounded to the nearest tick.
//!
//! # Placing each input's audio
//!
//! - Each input has its own libopus decoder at 48 kHz stereo; libopus
//!   upmixes mono publishers.
//! - A packet that starts within ±10 ms of where the input's previous packet
//!   ended is placed right after it, so timestamp jitter makes neither gaps
//!   nor overlaps (clicks). After a reordered packet, the end of the input's
//!   audio not yet mixed is such a point too.
//! - A packet further away is placed at its own time. A gap before it that no
//!   earlier packet covers is filled by Opus packet-loss concealment when it
//!   is at most 120 ms long and left silent when longer. Audio behind it that
//!   is not yet mixed is overwritten, so a reordered packet takes back the
//!   slot that concealment had filled.
//! - A packet libopus cannot decode counts as a decode error and is treated
//!   as lost.
//! - Audio for time already mixed is dropped and counted
//!   ([`MixStats::late_samples_dropped`]). So is audio more than 10 s ahead
//!   of the mix point ([`MixStats::ahead_samples_dropped`]), which bounds an
//!   input's buffer to 10 s (3.84 MB).
//! - After [`AudioMixer::end_input`], what the input has buffered is still
//!   mixed; then its decoder and buffer are freed. A later packet for the
//!   same input starts it afresh.
//!
//! # Mixing and limiting
//!
//! - The mix is the plain sum of the inputs: one speaker is heard at the
//!   level they sent, however many others are connected.
//! - A look-ahead peak limiter keeps every sample within ±0.98. The gain each
//!   sample needs to stay under that ceiling is known 2 ms in advance; the
//!   gain ramps down over those 2 ms, so it has reached the needed value when
//!   the peak plays and never jumps, and recovers exponentially with an 80 ms
//!   time constant. While the sum stays within ±0.98 the gain is exactly 1 and
//!   samples pass unchanged.
//! - The look-ahead does not shift the timeline: `advance(t)` sums the inputs
//!   up to `t` but outputs the mix up to 2 ms before `t`; [`AudioMixer::finish`]
//!   outputs the rest.
//!
//! # Output
//!
//! - Sample rate and channel count come from [`AudioParams`]; mono is the mean
//!   of left and right.
//! - 44.1 kHz and 16 kHz are made by rubato's synchronous FFT resampler. The
//!   ratio is fixed and rational (147/160, 1/3), which is exactly what it is
//!   built for: its output count follows the ratio exactly, so the output
//!   never drifts from the timeline; it is band-limited with a
//!   Blackman-Harris anti-aliasing filter; and it costs less per sample than a
//!   sinc interpolator of the same quality. Its fixed delay is discarded, so
//!   resampled audio stays on the timeline to the sample.
//! - AAC-LC is encoded by syom at `bitrate_bps`, capped at the format's limit
//!   of 6144 bits per channel per frame (96 kbit/s per channel at 16 kHz).
//!
//! # Driving
//!
//! Sans-IO and clock-free: the caller hands in packets with their server time
//! and calls `advance` with a time that trails the live edge by its jitter
//! allowance (audio arriving later than that is dropped as late), then
//! `finish` at the end. In steady state `advance` allocates nothing but the
//! AAC frames it returns.

use std::collections::VecDeque;

use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use crate::domain::params::AudioParams;
use crate::hls::stream::BASE_90K;
use crate::media::aac::{AacFrame, AAC_LC_PRIMING};

const MIX_RATE: u32 = 48_000;
const MIX_CHANNELS: usize = 2;
/// The longest Opus packet, 120 ms, in frames at 48 kHz.
const OPUS_MAX_FRAMES: usize = 5_760;
/// libopus conceals in steps of 2.5 ms.
const PLC_STEP_FRAMES: usize = 120;
/// A packet starting this close (10 ms) to its predecessor's end is joined to it.
const SNAP_FRAMES: u64 = 480;
/// The longest gap Opus concealment fills (120 ms); longer gaps stay silent.
const PLC_MAX_FRAMES: i64 = OPUS_MAX_FRAMES as i64;
/// How far ahead of the mix point an input may buffer (10 s).
const MAX_AHEAD_FRAMES: i64 = 10 * MIX_RATE as i64;
/// An input buffer that grew past 1 s (a burst far ahead) is given back to
/// the allocator once it has drained, so memory follows the usual jitter.
const SHRINK_ABOVE_FRAMES: usize = MIX_RATE as usize;
/// Bound of mix positions.
const MAX_POSITION: i128 = 1 << 60;
/// Frames summed per step (20 ms); sizes the scratch buffers.
const BLOCK_FRAMES: usize = 960;
/// The limiter's ceiling: no output sample's magnitude exceeds it.
pub(crate) const CEILING: f32 = 0.98;
/// The limiter's look-ahead window (2 ms): its gain ramps over this many frames.
const LOOKAHEAD_FRAMES: usize = 96;
/// The limiter's release time constant.
const RELEASE_SECONDS: f64 = 0.08;
/// Below this distance from 1 (0.001 dB) a recovering gain is taken as 1, so
/// that quiet audio after a loud passage passes unchanged again, 0.75 s
/// after the deepest reduction.
const GAIN_SNAP: f32 = 1e-4;
/// Resampler chunk at 48 kHz (20 ms): a whole number of the 160-frame
/// period of 48 → 44.1 kHz and of the 3-frame period of 48 → 16 kHz.
const RESAMPLER_CHUNK: usize = 960;
const AAC_FRAME_SAMPLES: i128 = 1024;
/// ISO/IEC 14496-3 caps an AAC frame at 6144 bits per channel.
const AAC_MAX_BITS_PER_CHANNEL_FRAME: u64 = 6144;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MixError {
    #[error("unsupported output sample rate {0} Hz (48000, 44100 or 16000)")]
    SampleRate(u32),
    #[error("unsupported output channel count {0} (1 or 2)")]
    Channels(u8),
    #[error("AAC encoder: {0}")]
    Encode(#[from] syom::AacError),
    #[error("resampler setup: {0}")]
    ResamplerSetup(#[from] rubato::ResamplerConstructionError),
    #[error("resampler: {0}")]
    Resample(#[from] rubato::ResampleError),
    #[error("resampler buffer: {0}")]
    ResampleBuffer(#[from] rubato::audioadapter_buffers::SizeError),
}

/// Counters since the mixer was made; sample counts are frames at 48 kHz
/// (one per instant, whatever the channel count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixStats {
    /// Audio that arrived for time already mixed (or before the epoch).
    pub late_samples_dropped: u64,
    /// Audio that arrived more than 10 s ahead of the mix point.
    pub ahead_samples_dropped: u64,
    /// Mix samples the limiter turned down.
    pub limited_samples: u64,
    /// Packets libopus could not decode (each treated as lost).
    pub decode_errors: u64,
    /// Inputs held now: live, or ended with audio still to mix.
    pub inputs: usize,
}

/// The mixer: Opus packets in, ADTS frames out (see the module docs).
pub struct AudioMixer {
    epoch_us: i64,
    pcm: PcmMix,
    output: OutputStage,
}

impl AudioMixer {
    pub fn new(params: AudioParams, epoch_us: i64) -> Result<Self, MixError> {
        Ok(Self {
            epoch_us,
            pcm: PcmMix::new(),
            output: OutputStage::new(params)?,
        })
    }

    /// An Opus packet of input `input` whose first sample plays at server
    /// time `t_us` (µs, the timeline of `epoch_us`).
    pub fn push_opus(&mut self, input: u64, t_us: i64, packet: &[u8]) {
        let position = mix_position(t_us, self.epoch_us);
        self.pcm.push_opus(input, position, packet);
    }

    /// The input left; what it has buffered is still mixed, then its decoder
    /// and buffer are dropped.
    pub fn end_input(&mut self, input: u64) {
        self.pcm.end_input(input);
    }

    /// Mixes every input up to server time `t_us` (exclusive), encodes, and
    /// appends the finished ADTS frames to `out`. The last few milliseconds
    /// (the limiter's look-ahead, a partial resampler chunk or AAC frame)
    /// come out with a later call or [`Self::finish`].
    pub fn advance(&mut self, t_us: i64, out: &mut Vec<AacFrame>) -> Result<(), MixError> {
        let until = mix_position(t_us, self.epoch_us);
        let output = &mut self.output;
        self.pcm.render(until, |frames| output.push(frames, out))
    }

    /// Outputs what the limiter still holds and flushes the resampler and
    /// the encoder; the track ends at the last `advance` time.
    pub fn finish(mut self, out: &mut Vec<AacFrame>) -> Result<(), MixError> {
        let output = &mut self.output;
        self.pcm.flush(|frames| output.push(frames, out))?;
        let total = u64::try_from(self.pcm.summed_to).unwrap_or(0);
        self.output.finish(total, out)
    }

    pub fn stats(&self) -> MixStats {
        self.pcm.stats()
    }
}

/// Server time → mix sample position (48 kHz, 0 at the epoch), rounded to the nearest.
fn mix_position(t_us: i64, epoch_us: i64) -> i64 {
    let micros = i128::from(t_us) - i128::from(epoch_us);
    let position = (micros * i128::from(MIX_RATE) * 2 + 1_000_000).div_euclid(2_000_000);
    // 760 000 years either way: no recording gets there, and position
    // arithmetic cannot overflow.
    position.clamp(-MAX_POSITION, MAX_POSITION) as i64
}

/// PTS of AAC frame `frame` of a track at `rate` that starts at the epoch.
fn aac_frame_pts(rate: u32, frame: u64) -> u64 {
    let start = i128::from(frame) * AAC_FRAME_SAMPLES - i128::from(AAC_LC_PRIMING);
    let rate = i128::from(rate);
    let ticks = (start * 90_000 * 2 + rate).div_euclid(2 * rate);
    (i128::from(BASE_90K) + ticks).max(0) as u64
}

/// The PCM stage: placement, sum and limiter, producing 48 kHz stereo.
pub(crate) struct PcmMix {
    inputs: Vec<Input>,
    /// Mix position up to which the inputs have been summed (exclusive).
    summed_to: i64,
    limiter: Limiter,
    /// Interleaved stereo from the decoder (one packet or one concealment).
    decoded: Vec<f32>,
    sum: Vec<[f32; 2]>,
    limited: Vec<[f32; 2]>,
    stats: MixStats,
}

struct Input {
    id: u64,
    decoder: opus::Decoder,
    /// Audio for mix positions `[summed_to, summed_to + len)`; silence
    /// wherever nothing was placed.
    pending: VecDeque<[f32; 2]>,
    /// Where the previous packet ended: the next one continues there.
    continuation: Option<i64>,
    ended: bool,
}

/// Frames a placement could not keep.
struct Dropped {
    late: u64,
    ahead: u64,
}

impl Input {
    fn new(id: u64) -> Result<Self, opus::Error> {
        Ok(Self {
            id,
            decoder: new_decoder()?,
            pending: VecDeque::new(),
            continuation: None,
            ended: false,
        })
    }

    /// Writes interleaved stereo starting at mix position `start`, keeping
    /// only what lies between the mix point and the look-ahead limit.
    fn place(&mut self, start: i64, interleaved: &[f32], summed_to: i64) -> Dropped {
        let frames = (interleaved.len() / MIX_CHANNELS) as i64;
        let end = start + frames;
        let keep_from = start.max(summed_to).min(end);
        let keep_to = end.min(summed_to + MAX_AHEAD_FRAMES).max(keep_from);
        let dropped = Dropped {
            late: (keep_from - start) as u64,
            ahead: (end - keep_to) as u64,
        };
        if keep_from < keep_to {
            let needed = (keep_to - summed_to) as usize;
            if self.pending.len() < needed {
                self.pending.resize(needed, [0.0; 2]);
            }
            let first = (keep_from - summed_to) as usize;
            let source = interleaved[(keep_from - start) as usize * MIX_CHANNELS..]
                .chunks_exact(MIX_CHANNELS);
            for (slot, frame) in self.pending.range_mut(first..needed).zip(source) {
                *slot = [frame[0], frame[1]];
            }
        }
        dropped
    }

    /// Fills `frames` lost frames from `from` on with Opus concealment.
    fn conceal(&mut self, from: i64, frames: usize, scratch: &mut [f32], summed_to: i64) {
        let request = frames.div_ceil(PLC_STEP_FRAMES) * PLC_STEP_FRAMES;
        let Some(buffer) = scratch.get_mut(..request * MIX_CHANNELS) else {
            return;
        };
        // A failed concealment leaves the gap silent, which is what it
        // would be without concealment.
        if let Ok(concealed) = self.decoder.decode_float(&[], buffer, false) {
            let kept = concealed.min(frames) * MIX_CHANNELS;
            self.place(from, &scratch[..kept], summed_to);
        }
    }
}

fn new_decoder() -> Result<opus::Decoder, opus::Error> {
    opus::Decoder::new(MIX_RATE, opus::Channels::Stereo)
}

impl PcmMix {
    pub(crate) fn new() -> Self {
        Self {
            inputs: Vec::new(),
            summed_to: 0,
            limiter: Limiter::new(),
            decoded: vec![0.0; OPUS_MAX_FRAMES * MIX_CHANNELS],
            sum: vec![[0.0; 2]; BLOCK_FRAMES],
            limited: Vec::with_capacity(BLOCK_FRAMES),
            stats: MixStats::default(),
        }
    }

    pub(crate) fn stats(&self) -> MixStats {
        MixStats {
            limited_samples: self.limiter.limited,
            inputs: self.inputs.len(),
            ..self.stats
        }
    }

    /// An Opus packet whose first sample belongs at mix position `position`.
    pub(crate) fn push_opus(&mut self, id: u64, position: i64, packet: &[u8]) {
        if packet.is_empty() {
            // An empty payload would make libopus conceal 120 ms.
            self.stats.decode_errors += 1;
            return;
        }
        let index = match self.inputs.iter().position(|input| input.id == id) {
            Some(index) => index,
            None => match Input::new(id) {
                Ok(input) => {
                    self.inputs.push(input);
                    self.inputs.len() - 1
                }
                Err(_) => {
                    self.stats.decode_errors += 1;
                    return;
                }
            },
        };
        let summed_to = self.summed_to;
        let input = &mut self.inputs[index];
        if input.ended {
            match new_decoder() {
                Ok(decoder) => input.decoder = decoder,
                Err(_) => {
                    self.stats.decode_errors += 1;
                    return;
                }
            }
            input.ended = false;
            input.continuation = None;
        }
        let buffered_to = summed_to + input.pending.len() as i64;
        // After a reordered packet its successor continues the audio that
        // overtook it, not the reordered packet.
        let buffered_end = (!input.pending.is_empty()).then_some(buffered_to);
        let start = [input.continuation, buffered_end]
            .into_iter()
            .flatten()
            .find(|end| position.abs_diff(*end) <= SNAP_FRAMES)
            .unwrap_or(position);
        if let Some(end) = input.continuation {
            // Only time that nothing covers yet is concealed: after a
            // reordered packet, its successor must not conceal over the
            // packets that overtook it.
            let uncovered_from = end.max(buffered_to);
            let gap = start - uncovered_from;
            if gap > 0 && gap <= PLC_MAX_FRAMES {
                input.conceal(uncovered_from, gap as usize, &mut self.decoded, summed_to);
            }
        }
        match input.decoder.decode_float(packet, &mut self.decoded, false) {
            Ok(frames) if frames > 0 => {
                let frames = frames.min(OPUS_MAX_FRAMES);
                let dropped = input.place(start, &self.decoded[..frames * MIX_CHANNELS], summed_to);
                self.stats.late_samples_dropped += dropped.late;
                self.stats.ahead_samples_dropped += dropped.ahead;
                input.continuation = Some(start + frames as i64);
            }
            _ => self.stats.decode_errors += 1,
        }
    }

    pub(crate) fn end_input(&mut self, id: u64) {
        if let Some(input) = self.inputs.iter_mut().find(|input| input.id == id) {
            input.ended = true;
        }
        self.drop_finished_inputs();
    }

    fn drop_finished_inputs(&mut self) {
        self.inputs
            .retain(|input| !(input.ended && input.pending.is_empty()));
    }

    /// Sums the inputs up to mix position `until` (exclusive) and hands the
    /// limited mix, which trails the sum by the limiter's look-ahead, to `sink`.
    pub(crate) fn render<E>(
        &mut self,
        until: i64,
        mut sink: impl FnMut(&[[f32; 2]]) -> Result<(), E>,
    ) -> Result<(), E> {
        while self.summed_to < until {
            let frames = (until - self.summed_to).min(BLOCK_FRAMES as i64) as usize;
            let sum = &mut self.sum[..frames];
            sum.fill([0.0; 2]);
            for input in &mut self.inputs {
                let available = frames.min(input.pending.len());
                for (acc, frame) in sum.iter_mut().zip(input.pending.drain(..available)) {
                    acc[0] += frame[0];
                    acc[1] += frame[1];
                }
                if input.pending.capacity() > SHRINK_ABOVE_FRAMES
                    && input.pending.len() < SHRINK_ABOVE_FRAMES / 4
                {
                    input.pending.shrink_to(SHRINK_ABOVE_FRAMES / 4);
                }
            }
            self.summed_to += frames as i64;
            self.inputs
                .retain(|input| !(input.ended && input.pending.is_empty()));
            self.limited.clear();
            for &frame in sum.iter() {
                if let Some(limited) = self.limiter.push(frame) {
                    self.limited.push(limited);
                }
            }
            if !self.limited.is_empty() {
                sink(&self.limited)?;
            }
        }
        Ok(())
    }

    /// Hands `sink` the mix the limiter still holds, so that the output
    /// ends where the sum ended.
    pub(crate) fn flush<E>(
        &mut self,
        mut sink: impl FnMut(&[[f32; 2]]) -> Result<(), E>,
    ) -> Result<(), E> {
        self.limited.clear();
        for _ in 0..self.limiter.delay() {
            if let Some(limited) = self.limiter.push([0.0; 2]) {
                self.limited.push(limited);
            }
        }
        if self.limited.is_empty() {
            return Ok(());
        }
        sink(&self.limited)
    }
}

/// Look-ahead peak limiter on stereo frames (see the module docs).
///
/// With `W` the look-ahead window: for each frame `n`, `needed[n]` is the
/// gain that brings its peak down to the ceiling (1 if it is below). The
/// target gain for frame `n` is the mean over `j` in `n..n+W` of
/// `min(needed[j-W+1..=j])`. Every one of those minima includes `needed[n]`,
/// so the target never exceeds it, and as a moving average of a moving
/// minimum it ramps linearly over `W` frames instead of jumping. Hence the
/// output lags the input by `W - 1` frames.
struct Limiter {
    /// The last `W - 1` input frames, waiting for their look-ahead.
    delayed: Vec<[f32; 2]>,
    /// Candidates for the minimum of `needed` over the last `W` frames:
    /// (frame number, gain), gains increasing from the front.
    minima: VecDeque<(u64, f32)>,
    /// The last `W` windowed minima; their mean is the target gain.
    window: Vec<f32>,
    /// Sum of `1 - m` over `window`, and how many `m` are below 1: when none
    /// is, the target is exactly 1 and the sum is reset, so rounding never
    /// keeps quiet audio from passing unchanged.
    reduction_sum: f64,
    reduced: usize,
    /// 1 - the gain applied now.
    reduction: f32,
    release: f32,
    pushed: u64,
    limited: u64,
}

impl Limiter {
    fn new() -> Self {
        Self {
            delayed: vec![[0.0; 2]; LOOKAHEAD_FRAMES - 1],
            minima: VecDeque::with_capacity(LOOKAHEAD_FRAMES + 1),
            window: vec![1.0; LOOKAHEAD_FRAMES],
            reduction_sum: 0.0,
            reduced: 0,
            reduction: 0.0,
            release: (-1.0 / (RELEASE_SECONDS * f64::from(MIX_RATE))).exp() as f32,
            pushed: 0,
            limited: 0,
        }
    }

    /// How many frames the output lags the input.
    fn delay(&self) -> usize {
        self.delayed.len()
    }

    /// One input frame in; the frame `delay()` earlier out, once there is one.
    fn push(&mut self, frame: [f32; 2]) -> Option<[f32; 2]> {
        let n = self.pushed;
        self.pushed += 1;
        let peak = frame[0].abs().max(frame[1].abs());
        let needed = if peak > CEILING { CEILING / peak } else { 1.0 };

        while self.minima.back().is_some_and(|&(_, gain)| gain >= needed) {
            self.minima.pop_back();
        }
        self.minima.push_back((n, needed));
        while self
            .minima
            .front()
            .is_some_and(|&(at, _)| at + LOOKAHEAD_FRAMES as u64 <= n)
        {
            self.minima.pop_front();
        }
        let window_min = self.minima.front().map_or(1.0, |&(_, gain)| gain);

        let slot = (n % LOOKAHEAD_FRAMES as u64) as usize;
        let leaving = std::mem::replace(&mut self.window[slot], window_min);
        if leaving < 1.0 {
            self.reduced -= 1;
        }
        if window_min < 1.0 {
            self.reduced += 1;
        }
        // Kept as reductions (1 - gain): near a gain of 1 an f32 gain
        // cannot move by the release's tiny steps, a reduction can.
        let target = if self.reduced == 0 {
            self.reduction_sum = 0.0;
            0.0
        } else {
            self.reduction_sum += f64::from(1.0 - window_min) - f64::from(1.0 - leaving);
            (self.reduction_sum / LOOKAHEAD_FRAMES as f64) as f32
        };
        let released = self.reduction * self.release;
        let released = if released < GAIN_SNAP { 0.0 } else { released };
        self.reduction = target.max(released);

        let slot = (n % self.delayed.len() as u64) as usize;
        let out = std::mem::replace(&mut self.delayed[slot], frame);
        if n < self.delayed.len() as u64 {
            return None;
        }
        if self.reduction <= 0.0 {
            return Some(out);
        }
        self.limited += 1;
        let gain = 1.0 - self.reduction;
        // The clamp only catches rounding in the running mean.
        Some(out.map(|x| (x * gain).clamp(-CEILING, CEILING)))
    }
}

/// Downmix, resampling and AAC encoding of the limited mix.
struct OutputStage {
    channels: usize,
    rate: u32,
    encoder: syom::Encoder,
    /// Planar input of the next conversion: `chunk` frames per channel.
    staging: Vec<f32>,
    chunk: usize,
    filled: usize,
    resampling: Option<Resampling>,
    /// Output frames handed to the encoder so far.
    encoded: u64,
    /// AAC frames emitted so far.
    emitted: u64,
}

struct Resampling {
    fft: Fft<f32>,
    /// Planar output of one chunk.
    resampled: Vec<f32>,
    chunk_out: usize,
    /// Output frames still to discard for the resampler's delay.
    delay_left: usize,
}

impl OutputStage {
    fn new(params: AudioParams) -> Result<Self, MixError> {
        let channels = match params.channels {
            1 => 1,
            2 => 2,
            other => return Err(MixError::Channels(other)),
        };
        let rate = params.sample_rate_hz;
        if !matches!(rate, 48_000 | 44_100 | 16_000) {
            return Err(MixError::SampleRate(rate));
        }
        let max_bitrate = AAC_MAX_BITS_PER_CHANNEL_FRAME * channels as u64 * u64::from(rate) / 1024;
        let bitrate = params
            .bitrate_bps
            .min(u32::try_from(max_bitrate).unwrap_or(u32::MAX));
        let options = syom::EncodeOptions::default().with_bitrate_bps(bitrate);
        let encoder = syom::Encoder::new(rate, channels, &options)?;
        let (chunk, resampling) = if rate == MIX_RATE {
            (BLOCK_FRAMES, None)
        } else {
            let fft = Fft::<f32>::new(
                MIX_RATE as usize,
                rate as usize,
                RESAMPLER_CHUNK,
                channels,
                FixedSync::Both,
            )?;
            let chunk_out = fft.output_frames_next();
            let resampling = Resampling {
                resampled: vec![0.0; chunk_out * channels],
                chunk_out,
                delay_left: fft.output_delay(),
                fft,
            };
            (resampling.fft.input_frames_next(), Some(resampling))
        };
        Ok(Self {
            channels,
            rate,
            encoder,
            staging: vec![0.0; chunk * channels],
            chunk,
            filled: 0,
            resampling,
            encoded: 0,
            emitted: 0,
        })
    }

    /// Limited 48 kHz stereo in; AAC frames out as they complete.
    fn push(&mut self, frames: &[[f32; 2]], out: &mut Vec<AacFrame>) -> Result<(), MixError> {
        for &[left, right] in frames {
            if self.channels == 1 {
                self.staging[self.filled] = 0.5 * (left + right);
            } else {
                self.staging[self.filled] = left;
                self.staging[self.chunk + self.filled] = right;
            }
            self.filled += 1;
            if self.filled == self.chunk {
                self.convert(None, out)?;
            }
        }
        if self.resampling.is_none() && self.filled > 0 {
            self.convert(None, out)?;
        }
        Ok(())
    }

    /// Encodes the staged frames, through the resampler if there is one.
    /// `limit` caps the total output frames (the end of the track).
    fn convert(&mut self, limit: Option<u64>, out: &mut Vec<AacFrame>) -> Result<(), MixError> {
        let filled = std::mem::take(&mut self.filled);
        let Some(resampling) = &mut self.resampling else {
            let (left, right) = self.staging.split_at_mut(self.chunk);
            let right_end = filled.min(right.len());
            let planes = [&mut left[..filled], &mut right[..right_end]];
            return encode(
                &mut self.encoder,
                planes,
                self.channels,
                self.rate,
                &mut self.encoded,
                &mut self.emitted,
                out,
            );
        };
        let input = SequentialSlice::new(&self.staging[..], self.channels, self.chunk)?;
        let mut output = SequentialSlice::new_mut(
            &mut resampling.resampled[..],
            self.channels,
            resampling.chunk_out,
        )?;
        let partial = Indexing {
            partial_len: Some(filled),
            ..Indexing::default()
        };
        let indexing = (filled < self.chunk).then_some(&partial);
        resampling
            .fft
            .process_into_buffer(&input, &mut output, indexing)?;
        let skip = resampling.delay_left.min(resampling.chunk_out);
        resampling.delay_left -= skip;
        let mut end = resampling.chunk_out;
        if let Some(limit) = limit {
            let room = limit.saturating_sub(self.encoded);
            end = end.min(skip + usize::try_from(room).unwrap_or(usize::MAX));
        }
        let (left, right) = resampling.resampled.split_at_mut(resampling.chunk_out);
        let right_end = end.min(right.len());
        let planes = [
            &mut left[skip..end],
            &mut right[skip.min(right_end)..right_end],
        ];
        encode(
            &mut self.encoder,
            planes,
            self.channels,
            self.rate,
            &mut self.encoded,
            &mut self.emitted,
            out,
        )
    }

    /// Ends the track after `total_mix_frames` mix frames (48 kHz).
    fn finish(mut self, total_mix_frames: u64, out: &mut Vec<AacFrame>) -> Result<(), MixError> {
        if self.resampling.is_some() {
            let rate = u64::from(self.rate);
            let mix_rate = u64::from(MIX_RATE);
            let total = (total_mix_frames * rate + mix_rate / 2) / mix_rate;
            // The resampler's delay holds back the last output frames:
            // feed silence until they are out.
            while self.encoded < total {
                self.convert(Some(total), out)?;
            }
        }
        if self.encoded == 0 {
            return Ok(());
        }
        let rate = self.rate;
        let emitted = &mut self.emitted;
        self.encoder.finish(|frame| {
            out.push(AacFrame {
                adts: frame.au.to_vec(),
                pts_90k: aac_frame_pts(rate, *emitted),
            });
            *emitted += 1;
            Ok(())
        })?;
        Ok(())
    }
}

/// Feeds planar PCM to the encoder and collects the frames it completes.
fn encode(
    encoder: &mut syom::Encoder,
    mut planes: [&mut [f32]; 2],
    channels: usize,
    rate: u32,
    encoded: &mut u64,
    emitted: &mut u64,
    out: &mut Vec<AacFrame>,
) -> Result<(), MixError> {
    let frames = planes[0].len();
    if frames == 0 {
        return Ok(());
    }
    for plane in &mut planes[..channels] {
        for sample in plane.iter_mut() {
            // Resampling can ring slightly past the limiter's ceiling;
            // syom refuses |x| > 1.
            *sample = sample.clamp(-1.0, 1.0);
        }
    }
    let [left, right] = planes;
    let planes: [&[f32]; 2] = [left, right];
    encoder.feed(&planes[..channels], |frame| {
        out.push(AacFrame {
            adts: frame.au.to_vec(),
            pts_90k: aac_frame_pts(rate, *emitted),
        });
        *emitted += 1;
        Ok(())
    })?;
    *encoded += frames as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::source::{AudioConfig, AudioSource, BEEP};

    const EPOCH_US: i64 = 1_700_000_000_000_000;
    /// Mix frames per millisecond.
    const MS: i64 = 48;
    const PACKET_MS: i64 = 20;
    /// The test tone's amplitude (-12 dBFS).
    const TONE: f32 = 0.251;

    fn source(hz: f32, channels: u8) -> AudioSource {
        AudioSource::new(AudioConfig {
            channels,
            frequency_hz: hz,
            ..AudioConfig::default()
        })
        .expect("source")
    }

    /// A tone at -1.5 dBFS: the source's sync-mark beep, made continuous.
    fn loud_source(hz: f32) -> AudioSource {
        AudioSource::new(AudioConfig {
            frequency_hz: hz,
            sync_marks: Some(BEEP),
            ..AudioConfig::default()
        })
        .expect("source")
    }

    /// The next `count` 20 ms packets.
    fn packets(src: &mut AudioSource, count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|_| src.next_frame().expect("frame").data)
            .collect()
    }

    /// The PCM stage's whole output up to `until_ms`, limiter drained.
    fn render(mix: &mut PcmMix, until_ms: i64) -> Vec<[f32; 2]> {
        let mut out = Vec::new();
        let mut collect = |frames: &[[f32; 2]]| {
            out.extend_from_slice(frames);
            Ok::<(), ()>(())
        };
        mix.render(until_ms * MS, &mut collect).expect("render");
        mix.flush(&mut collect).expect("flush");
        out
    }

    fn left(frames: &[[f32; 2]], from_ms: i64, to_ms: i64) -> Vec<f32> {
        frames[(from_ms * MS) as usize..(to_ms * MS) as usize]
            .iter()
            .map(|f| f[0])
            .collect()
    }

    /// Amplitude of the `hz` component of `x` (Goertzel).
    fn amplitude(x: &[f32], rate: u32, hz: f32) -> f32 {
        let w = 2.0 * std::f64::consts::PI * f64::from(hz) / f64::from(rate);
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s = f64::from(v) + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        (2.0 * power.sqrt() / x.len() as f64) as f32
    }

    fn peak(frames: &[[f32; 2]]) -> f32 {
        frames
            .iter()
            .flat_map(|f| f.iter())
            .fold(0.0f32, |m, x| m.max(x.abs()))
    }

    /// Runs an `AudioMixer` as a recording would: every 20 ms the packets
    /// due by then go in and the mix advances to 60 ms behind.
    fn record(
        params: AudioParams,
        inputs: &[(u64, i64, Vec<Vec<u8>>)],
        until_ms: i64,
    ) -> (Vec<AacFrame>, MixStats) {
        let mut mixer = AudioMixer::new(params, EPOCH_US).expect("mixer");
        let mut out = Vec::new();
        for now_ms in (0..=until_ms).step_by(PACKET_MS as usize) {
            for (id, start_ms, packets) in inputs {
                let k = (now_ms - start_ms) / PACKET_MS;
                if now_ms >= *start_ms && (k as usize) < packets.len() {
                    let t_us = EPOCH_US + (start_ms + k * PACKET_MS) * 1000;
                    mixer.push_opus(*id, t_us, &packets[k as usize]);
                }
            }
            mixer
                .advance(EPOCH_US + (now_ms - 60) * 1000, &mut out)
                .expect("advance");
        }
        mixer
            .advance(EPOCH_US + until_ms * 1000, &mut out)
            .expect("advance");
        let stats = mixer.stats();
        mixer.finish(&mut out).expect("finish");
        (out, stats)
    }

    fn decode(frames: &[AacFrame]) -> syom::DecodedAac {
        let adts: Vec<u8> = frames.iter().flat_map(|f| f.adts.clone()).collect();
        syom::decode_with(&adts, &syom::DecodeOptions::audio()).expect("decodes")
    }

    fn params(sample_rate_hz: u32, channels: u8) -> AudioParams {
        AudioParams {
            sample_rate_hz,
            channels,
            bitrate_bps: 64_000,
        }
    }

    /// Checks frame `k`'s PTS is `k·1024` samples at `rate` after the epoch,
    /// less the priming, to the nearest 90 kHz tick.
    fn assert_pts_follow_the_sample_count(frames: &[AacFrame], rate: u32) {
        for (k, frame) in frames.iter().enumerate() {
            let samples = k as f64 * 1024.0 - AAC_LC_PRIMING as f64;
            let expected = BASE_90K as f64 + samples * 90_000.0 / f64::from(rate);
            assert!(
                (frame.pts_90k as f64 - expected).abs() <= 0.5,
                "frame {k}: {} vs {expected}",
                frame.pts_90k
            );
        }
    }

    #[test]
    fn two_inputs_with_different_tones_are_both_in_the_mix() {
        let mut mix = PcmMix::new();
        let (mut low, mut high) = (source(440.0, 1), source(1000.0, 2));
        for (k, (a, b)) in packets(&mut low, 50)
            .iter()
            .zip(packets(&mut high, 50))
            .enumerate()
        {
            let position = k as i64 * PACKET_MS * MS;
            mix.push_opus(1, position, a);
            mix.push_opus(2, position, &b);
        }
        let out = render(&mut mix, 1000);
        assert_eq!(out.len(), 48_000, "the output covers the time mixed");
        let mid = left(&out, 200, 800);
        for hz in [440.0, 1000.0] {
            let a = amplitude(&mid, MIX_RATE, hz);
            assert!((a - TONE).abs() < 0.02, "{hz} Hz at {a}");
        }
        assert!(amplitude(&mid, MIX_RATE, 700.0) < 0.005);
        assert_eq!(mix.stats().limited_samples, 0);
        assert_eq!(mix.stats().inputs, 2);
    }

    #[test]
    fn the_mix_becomes_continuous_aac_frames_with_both_tones() {
        let inputs = [
            (1, 0, packets(&mut source(440.0, 1), 100)),
            (7, 0, packets(&mut source(1000.0, 2), 100)),
        ];
        let (frames, stats) = record(AudioParams::default(), &inputs, 2000);
        // 96 000 samples plus 1024 of priming fill 94.75 frames.
        assert_eq!(frames.len(), 95);
        assert_eq!(frames[0].pts_90k, BASE_90K - 1920);
        for pair in frames.windows(2) {
            assert_eq!(pair[1].pts_90k - pair[0].pts_90k, 1920);
        }
        assert_eq!(stats.late_samples_dropped, 0);
        let decoded = decode(&frames);
        assert_eq!((decoded.sample_rate, decoded.channels.len()), (48_000, 2));
        let mid = &decoded.channels[1][24_000..72_000];
        for hz in [440.0, 1000.0] {
            let a = amplitude(mid, 48_000, hz);
            assert!((a - TONE).abs() < 0.03, "{hz} Hz at {a}");
        }
        assert!(amplitude(mid, 48_000, 700.0) < 0.01);
    }

    #[test]
    fn loud_inputs_are_limited_under_the_ceiling() {
        let mut mix = PcmMix::new();
        let mut sources: Vec<_> = [300.0, 500.0, 700.0, 900.0]
            .into_iter()
            .map(loud_source)
            .collect();
        for k in 0..50 {
            for (id, src) in sources.iter_mut().enumerate() {
                let packet = src.next_frame().expect("frame").data;
                mix.push_opus(id as u64, k * PACKET_MS * MS, &packet);
            }
        }
        let out = render(&mut mix, 1000);
        let loudest = peak(&out);
        assert!(loudest <= CEILING, "peak {loudest}");
        assert!(
            loudest > 0.95,
            "the limiter only turns down what it must: {loudest}"
        );
        let limited = mix.stats().limited_samples;
        assert!(limited > 40_000, "the limiter was engaged: {limited}");
    }

    #[test]
    fn a_quiet_input_passes_bit_exact() {
        let packets = packets(&mut source(440.0, 1), 50);
        let mut mix = PcmMix::new();
        for (k, packet) in packets.iter().enumerate() {
            mix.push_opus(3, k as i64 * PACKET_MS * MS, packet);
        }
        let out = render(&mut mix, 1000);
        let mut decoder = new_decoder().expect("decoder");
        let mut expected = Vec::new();
        let mut pcm = vec![0.0; OPUS_MAX_FRAMES * 2];
        for packet in &packets {
            let n = decoder
                .decode_float(packet, &mut pcm, false)
                .expect("decode");
            expected.extend(pcm[..n * 2].chunks_exact(2).map(|f| [f[0], f[1]]));
        }
        assert!(
            out == expected,
            "gain exactly 1: the samples are the decoder's"
        );
        assert_eq!(mix.stats().limited_samples, 0);
    }

    #[test]
    fn the_limiter_ramps_before_a_sudden_peak_and_recovers_to_exactly_one() {
        let mut limiter = Limiter::new();
        let input: Vec<[f32; 2]> = (0..48_000)
            .map(|n| match n {
                10_000 => [5.0, -5.0],
                _ => [0.1, -0.1],
            })
            .collect();
        let out: Vec<[f32; 2]> = input
            .iter()
            .chain(std::iter::repeat_n(&[0.0; 2], limiter.delay()))
            .filter_map(|&f| limiter.push(f))
            .collect();
        assert_eq!(
            out.len(),
            input.len(),
            "the limiter does not shift the audio"
        );
        assert!(peak(&out) <= CEILING);
        let gains: Vec<f32> = out.iter().zip(&input).map(|(o, i)| o[0] / i[0]).collect();
        assert!(gains[10_000] <= CEILING / 5.0 + 1e-6);
        assert!(gains[..9_900].iter().all(|&g| g == 1.0));
        for pair in gains[9_900..10_001].windows(2) {
            assert!(
                pair[0] - pair[1] <= 1.0 / LOOKAHEAD_FRAMES as f32 + 1e-6,
                "the attack is a ramp, not a jump"
            );
        }
        assert!(
            gains[10_100] < 0.3 && gains[10_100] > gains[10_000],
            "a smooth release"
        );
        assert!(gains[40_000] < 1.0);
        assert!(
            out[47_000..] == input[47_000..],
            "quiet audio passes unchanged again"
        );
    }

    #[test]
    fn timestamp_jitter_within_10ms_is_snapped_to_the_continuation() {
        let packets = packets(&mut source(440.0, 1), 25);
        let jitter_ms = [0, 3, -4, 5, -2, 9, -9, 1];
        let (mut exact, mut jittery) = (PcmMix::new(), PcmMix::new());
        for (k, packet) in packets.iter().enumerate() {
            let position = k as i64 * PACKET_MS * MS;
            exact.push_opus(1, position, packet);
            jittery.push_opus(1, position + jitter_ms[k % jitter_ms.len()] * MS, packet);
        }
        assert!(render(&mut exact, 500) == render(&mut jittery, 500));
    }

    /// A libopus decoder driven by hand, to say what the mix must contain.
    struct Reference {
        decoder: opus::Decoder,
        pcm: Vec<f32>,
    }

    impl Reference {
        fn new() -> Self {
            Self {
                decoder: new_decoder().expect("decoder"),
                pcm: vec![0.0; OPUS_MAX_FRAMES * 2],
            }
        }

        fn frames(&self, n: usize) -> Vec<[f32; 2]> {
            self.pcm[..n * 2]
                .chunks_exact(2)
                .map(|f| [f[0], f[1]])
                .collect()
        }

        fn decode(&mut self, packet: &[u8]) -> Vec<[f32; 2]> {
            let n = self
                .decoder
                .decode_float(packet, &mut self.pcm, false)
                .expect("decode");
            self.frames(n)
        }

        fn conceal(&mut self, n: usize) -> Vec<[f32; 2]> {
            let n = self
                .decoder
                .decode_float(&[], &mut self.pcm[..n * 2], false)
                .expect("conceal");
            self.frames(n)
        }
    }

    #[test]
    fn a_packet_40ms_late_relative_to_its_neighbours_lands_at_its_own_time() {
        let packets = packets(&mut source(440.0, 1), 11);
        let mut mix = PcmMix::new();
        for (k, packet) in packets[..10].iter().enumerate() {
            mix.push_opus(1, k as i64 * PACKET_MS * MS, packet);
        }
        // The 11th packet says it starts at 240 ms, not at 200.
        mix.push_opus(1, 240 * MS, &packets[10]);
        let out = render(&mut mix, 300);

        let mut reference = Reference::new();
        let mut expected: Vec<[f32; 2]> = packets[..10]
            .iter()
            .flat_map(|p| reference.decode(p))
            .collect();
        expected.extend(reference.conceal(40 * MS as usize));
        expected.extend(reference.decode(&packets[10]));
        expected.resize(300 * MS as usize, [0.0; 2]);
        assert!(out == expected, "concealment for 40 ms, then the packet");
        assert!(peak(&out[200 * MS as usize..240 * MS as usize]) > 0.05);
    }

    #[test]
    fn a_reordered_packet_takes_its_own_slot_back() {
        let packets = packets(&mut source(440.0, 1), 10);
        let mut mix = PcmMix::new();
        for k in [0, 1, 2, 3, 4, 6, 5, 7, 8, 9] {
            // Packet 7 comes 4 ms late: it still joins packet 6.
            let jitter = if k == 7 { 4 * MS } else { 0 };
            mix.push_opus(1, k as i64 * PACKET_MS * MS + jitter, &packets[k]);
        }
        let out = render(&mut mix, 200);

        // Slot 5 is concealed when packet 6 arrives, then packet 5 replaces
        // the concealment, and packet 6 is left alone.
        let mut reference = Reference::new();
        let mut slots: Vec<Vec<[f32; 2]>> =
            packets[..5].iter().map(|p| reference.decode(p)).collect();
        let concealed = reference.conceal(PACKET_MS as usize * MS as usize);
        let sixth = reference.decode(&packets[6]);
        slots.push(reference.decode(&packets[5]));
        slots.push(sixth);
        slots.extend(packets[7..].iter().map(|p| reference.decode(p)));
        assert!(out == slots.concat());
        assert!(out[100 * MS as usize..120 * MS as usize] != concealed[..]);
        assert_eq!(mix.stats().late_samples_dropped, 0);
    }

    #[test]
    fn late_audio_is_dropped_and_counted() {
        let mut src = source(440.0, 1);
        let mut mix = PcmMix::new();
        for (k, packet) in packets(&mut src, 5).iter().enumerate() {
            mix.push_opus(1, k as i64 * PACKET_MS * MS, packet);
        }
        let mut out = Vec::new();
        mix.render(100 * MS, |f: &[[f32; 2]]| {
            out.extend_from_slice(f);
            Ok::<(), ()>(())
        })
        .expect("render");
        let late = packets(&mut src, 2);
        mix.push_opus(1, 40 * MS, &late[0]); // wholly behind the mix point
        mix.push_opus(1, 90 * MS, &late[1]); // half behind it
        assert_eq!(mix.stats().late_samples_dropped, 960 + 480);
        out.extend(render(&mut mix, 120));
        assert!(
            peak(&out[100 * MS as usize..110 * MS as usize]) > 0.1,
            "the rest is kept"
        );
        assert!(peak(&out[110 * MS as usize..]) == 0.0);
    }

    #[test]
    fn audio_more_than_10s_ahead_is_dropped_and_counted() {
        let packets = packets(&mut source(440.0, 1), 2);
        let mut mix = PcmMix::new();
        mix.push_opus(1, 10_500 * MS, &packets[0]);
        mix.push_opus(2, 9_990 * MS, &packets[1]);
        assert_eq!(mix.stats().ahead_samples_dropped, 960 + 480);
        let buffered: Vec<usize> = mix.inputs.iter().map(|i| i.pending.len()).collect();
        assert_eq!(buffered, [0, MAX_AHEAD_FRAMES as usize]);
    }

    #[test]
    fn a_corrupt_packet_is_counted_and_concealed() {
        let mut packets = packets(&mut source(440.0, 1), 10);
        packets[5] = vec![0xff; 7]; // code 3 claiming 63 frames: invalid
        let mut mix = PcmMix::new();
        for (k, packet) in packets.iter().enumerate() {
            mix.push_opus(1, k as i64 * PACKET_MS * MS, packet);
        }
        mix.push_opus(1, 200 * MS, &[]);
        assert_eq!(mix.stats().decode_errors, 2);
        let out = render(&mut mix, 200);
        let lost = amplitude(&left(&out, 100, 120), MIX_RATE, 440.0);
        assert!(lost > 0.05, "the lost 20 ms are concealed: {lost}");
    }

    #[test]
    fn an_ended_input_is_freed_once_its_audio_is_mixed() {
        let mut src = source(440.0, 1);
        let mut mix = PcmMix::new();
        for (k, packet) in packets(&mut src, 10).iter().enumerate() {
            mix.push_opus(1, k as i64 * PACKET_MS * MS, packet);
        }
        mix.end_input(1);
        mix.end_input(99); // unknown: ignored
        let mut out = Vec::new();
        let mut render_to = |mix: &mut PcmMix, ms: i64| {
            mix.render(ms * MS, |f: &[[f32; 2]]| {
                out.extend_from_slice(f);
                Ok::<(), ()>(())
            })
            .expect("render");
        };
        render_to(&mut mix, 100);
        assert_eq!(mix.stats().inputs, 1, "audio still to mix");
        render_to(&mut mix, 300);
        assert_eq!(mix.stats().inputs, 0);
        // The same id coming back is a fresh input at its own time.
        mix.push_opus(1, 400 * MS, &packets(&mut src, 1)[0]);
        assert_eq!(mix.stats().inputs, 1);
        render_to(&mut mix, 500);
        mix.flush(|f: &[[f32; 2]]| {
            out.extend_from_slice(f);
            Ok::<(), ()>(())
        })
        .expect("flush");
        assert_eq!(out.len(), 500 * MS as usize);
        assert!(amplitude(&left(&out, 100, 190), MIX_RATE, 440.0) > 0.2);
        assert!(peak(&out[200 * MS as usize..400 * MS as usize]) == 0.0);
        assert!(peak(&out[400 * MS as usize..420 * MS as usize]) > 0.1);
    }

    #[test]
    fn without_inputs_the_track_is_continuous_silence() {
        let (frames, stats) = record(AudioParams::default(), &[], 1000);
        // 48 000 samples plus 1024 of priming fill 47.9 frames.
        assert_eq!(frames.len(), 48);
        assert_pts_follow_the_sample_count(&frames, 48_000);
        assert_eq!(stats.inputs, 0);
        let decoded = decode(&frames);
        let loudest = decoded.channels[0]
            .iter()
            .fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(loudest < 1e-3, "{loudest}");
    }

    /// Where a tone starting at 500 ms first reaches half its amplitude in
    /// the decoded track, in seconds after the epoch.
    fn onset_seconds(decoded: &syom::DecodedAac) -> f64 {
        let rate = f64::from(decoded.sample_rate);
        let first = decoded.channels[0]
            .iter()
            .position(|x| x.abs() > TONE / 2.0)
            .expect("the tone is there");
        (first as f64 - AAC_LC_PRIMING as f64) / rate
    }

    #[test]
    fn resampled_output_keeps_the_timeline_and_the_tone() {
        let inputs = [(1, 500, packets(&mut source(1000.0, 1), 75))];
        let (native, _) = record(params(48_000, 2), &inputs, 2000);
        let native_onset = onset_seconds(&decode(&native));
        for rate in [44_100, 16_000] {
            let (frames, stats) = record(params(rate, 2), &inputs, 2000);
            let total_samples = 2 * u64::from(rate) + AAC_LC_PRIMING;
            assert_eq!(
                frames.len() as u64,
                total_samples.div_ceil(1024),
                "{rate} Hz"
            );
            assert_pts_follow_the_sample_count(&frames, rate);
            assert_eq!(stats.late_samples_dropped, 0);
            let decoded = decode(&frames);
            assert_eq!(decoded.sample_rate, rate);
            let mid = &decoded.channels[0][rate as usize..rate as usize * 3 / 2];
            let tone = amplitude(mid, rate, 1000.0);
            let off = amplitude(mid, rate, 1300.0);
            assert!(
                (tone - TONE).abs() < 0.03 && off < 0.01,
                "{rate} Hz: {tone} vs {off}"
            );
            let shift = onset_seconds(&decoded) - native_onset;
            assert!(
                shift.abs() < 0.000_1,
                "{rate} Hz: tone starts {shift} s off"
            );
        }
    }

    #[test]
    fn mono_output_is_the_mean_of_left_and_right() {
        // A stereo publisher with the tone on the left only.
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio)
                .expect("encoder");
        let mut phase = 0.0f64;
        let step = 2.0 * std::f64::consts::PI * 440.0 / 48_000.0;
        let packets: Vec<Vec<u8>> = (0..50)
            .map(|_| {
                let pcm: Vec<f32> = (0..960)
                    .flat_map(|_| {
                        phase += step;
                        [(phase.sin() * 0.5) as f32, 0.0]
                    })
                    .collect();
                encoder.encode_vec_float(&pcm, 4000).expect("encode")
            })
            .collect();
        let (frames, _) = record(params(48_000, 1), &[(1, 0, packets)], 1000);
        let decoded = decode(&frames);
        assert_eq!(decoded.channels.len(), 1);
        let a = amplitude(&decoded.channels[0][12_000..36_000], 48_000, 440.0);
        assert!((a - 0.25).abs() < 0.03, "half the left channel's 0.5: {a}");
    }

    #[test]
    fn the_priming_compensated_is_the_encoders_at_every_output_rate() {
        for rate in [44_100, 16_000] {
            let options = syom::EncodeOptions::default().with_bitrate_bps(64_000);
            let mut encoder = syom::Encoder::new(rate, 1, &options).expect("encoder");
            encoder.feed(&[&[0.1f32; 4096]], |_| Ok(())).expect("feed");
            let info = encoder.finish(|_| Ok(())).expect("finish");
            assert_eq!(info.priming, AAC_LC_PRIMING, "{rate} Hz");
        }
    }

    #[test]
    fn parameters_outside_the_api_are_refused_and_the_bitrate_capped() {
        assert!(matches!(
            AudioMixer::new(params(22_050, 2), 0),
            Err(MixError::SampleRate(22_050))
        ));
        assert!(matches!(
            AudioMixer::new(params(48_000, 3), 0),
            Err(MixError::Channels(3))
        ));
        let fastest_mono_16k = AudioParams {
            sample_rate_hz: 16_000,
            channels: 1,
            bitrate_bps: 128_000,
        };
        let mut mixer = AudioMixer::new(fastest_mono_16k, 0).expect("capped to 96 kbit/s");
        let mut out = Vec::new();
        mixer.advance(1_000_000, &mut out).expect("advance");
        mixer.finish(&mut out).expect("finish");
        assert_eq!(out.len(), 17, "16 000 samples plus priming");
    }

    #[test]
    fn positions_round_to_the_nearest_sample_around_the_epoch() {
        assert_eq!(mix_position(EPOCH_US, EPOCH_US), 0);
        assert_eq!(mix_position(EPOCH_US + 1_000, EPOCH_US), 48);
        assert_eq!(mix_position(EPOCH_US + 10, EPOCH_US), 0); // 0.48
        assert_eq!(mix_position(EPOCH_US + 11, EPOCH_US), 1); // 0.528
        assert_eq!(mix_position(EPOCH_US - 11, EPOCH_US), -1);
        assert_eq!(aac_frame_pts(48_000, 1), BASE_90K);
        assert_eq!(aac_frame_pts(44_100, 2), BASE_90K + 2090); // 2089.8
    }
}
