//! NVIDIA's hardware decoder (NVDEC), probed at run time.
//!
//! kiroku decodes on the CPU; this module only answers whether, and how
//! far, this machine's NVDEC could decode the H.264 that publishers send,
//! so that `kiroku doctor` (and `bench/device.sh`) report the video engines
//! measured rather than assumed. `libnvcuvid.so.1` is opened with
//! `libloading` and kept for the life of the process, like the rest of the
//! driver ([`crate::cuda`]).
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use libloading::Library;
use nvidia_video_codec_sdk::sys::cuviddec::{
    cudaVideoChromaFormat_enum, cudaVideoCodec_enum, CUVIDDECODECAPS,
};

use crate::cuda::{load_library, symbol, CuResult, Device, DriverError};

const NVCUVID_LIBRARY: &str = "libnvcuvid.so.1";

/// What the first GPU's NVDEC does with 8-bit 4:2:0 H.264.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Available(H264Decoding),
    Unavailable(Unavailable),
}

/// NVDEC's limits for 8-bit 4:2:0 H.264 on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H264Decoding {
    pub device_name: String,
    /// Decoder engines on the device (0 where the driver does not say).
    pub engines: u8,
    pub max_width: u32,
    pub max_height: u32,
}

/// Why NVDEC cannot decode H.264 here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("the NVDEC of {device} does not decode 8-bit 4:2:0 H.264")]
    NoH264 { device: String },
}

type GetDecoderCaps = unsafe extern "C" fn(*mut CUVIDDECODECAPS) -> CuResult;

/// `cuvidGetDecoderCaps`, with its library kept loaded for the process.
static GET_DECODER_CAPS: OnceLock<Result<(GetDecoderCaps, Library), DriverError>> = OnceLock::new();

fn get_decoder_caps() -> Result<GetDecoderCaps, DriverError> {
    GET_DECODER_CAPS
        .get_or_init(|| {
            let library = load_library(NVCUVID_LIBRARY)?;
            // SAFETY: the prototype of cuvidGetDecoderCaps in cuviddec.h; the
            // library is kept beside the pointer, in a static.
            let function = unsafe {
                symbol::<GetDecoderCaps>(&library, NVCUVID_LIBRARY, "cuvidGetDecoderCaps")
            }?;
            Ok((function, library))
        })
        .as_ref()
        .map(|(function, _)| *function)
        .map_err(Clone::clone)
}

/// Asks the first CUDA device's NVDEC about 8-bit 4:2:0 H.264.
pub fn probe_h264() -> Probe {
    match query_h264() {
        Ok(decoding) => Probe::Available(decoding),
        Err(reason) => {
            tracing::debug!(%reason, "NVDEC unavailable");
            Probe::Unavailable(reason)
        }
    }
}

fn query_h264() -> Result<H264Decoding, Unavailable> {
    let device = Device::first()?;
    let get_caps = get_decoder_caps()?;
    // SAFETY: every field of CUVIDDECODECAPS is an integer, an array of
    // them or a C enum whose variant 0 exists (MPEG1, monochrome), so all
    // zeros is a valid value.
    let mut caps: CUVIDDECODECAPS = unsafe { MaybeUninit::zeroed().assume_init() };
    caps.eCodecType = cudaVideoCodec_enum::cudaVideoCodec_H264;
    caps.eChromaFormat = cudaVideoChromaFormat_enum::cudaVideoChromaFormat_420;
    caps.nBitDepthMinus8 = 0;
    let cuda = crate::cuda::cuda()?;
    // SAFETY: the query's fields are set; the driver fills in the rest
    // (integers only) while the device's context is current.
    let result = device.with_current(|| unsafe { get_caps(&mut caps) })?;
    cuda.check("cuvidGetDecoderCaps", result)?;
    if caps.bIsSupported == 0 {
        return Err(Unavailable::NoH264 {
            device: device.name().to_owned(),
        });
    }
    Ok(H264Decoding {
        device_name: device.name().to_owned(),
        engines: caps.nNumNVDECs,
        max_width: caps.nMaxWidth,
        max_height: caps.nMaxHeight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::CUDA_LIBRARY;

    /// Without the driver: the missing library is named. With it (the GPU
    /// machine `bench/device.sh` runs on): limits or a reason, never a crash.
    #[test]
    fn the_probe_reports_limits_or_names_what_is_missing() {
        // SAFETY: the NVIDIA driver's library, as in `load_library`.
        let has_driver = unsafe { Library::new(CUDA_LIBRARY) }.is_ok();
        match probe_h264() {
            Probe::Available(decoding) => {
                assert!(has_driver);
                assert!(decoding.max_width >= 1920 && decoding.max_height >= 1080);
                eprintln!("NVDEC: {decoding:?}");
            }
            Probe::Unavailable(reason) if has_driver => {
                assert!(!reason.to_string().is_empty());
                eprintln!("NVDEC unavailable: {reason}");
            }
            Probe::Unavailable(reason) => assert!(
                matches!(
                    &reason,
                    Unavailable::Driver(DriverError::LibraryMissing {
                        library: CUDA_LIBRARY,
                        ..
                    })
                ),
                "{reason:?}"
            ),
        }
    }
}
