//! The unsafe half of NVENC support: loading the driver's libraries, the
//! NVENC function table, and the calls through it.
//!
//! Two habits keep Rust's validity rules intact at this boundary:
//! - `NVENCSTATUS` is a C enum. The function pointers are re-typed to
//!   return it as the `u32` it is in C, so a status code newer than the
//!   SDK 12.1 bindings is a number, not an invalid Rust enum.
//! - Structures are zero-initialised only where zero is a valid value of
//!   every field ([`ZeroIsValid`]). The two whose enums have no zero
//!   variant get that field written before they are assumed initialised,
//!   and the bitstream lock, which the driver fills in, is read field by
//!   field through raw pointers.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr};
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::OnceLock;

use libloading::Library;
use nvidia_video_codec_sdk::sys::nvEncodeAPI::{self as sys, GUID, NVENCSTATUS};

use super::{
    nv12_len, write_nv12, ApiVersion, EncodePlan, NvencCallError, NvencStatus, Unavailable,
};
use crate::cuda::{self, load_library, symbol, Device};
use crate::{EncodeError, Picture};

const NVENC_LIBRARY: &str = "libnvidia-encode.so.1";

/// P1 is the fastest preset and P7 the best; P4 is the middle, and the
/// low-latency tuning turns off what would delay output (B-frames,
/// lookahead).
const PRESET: GUID = sys::NV_ENC_PRESET_P4_GUID;
const TUNING: sys::NV_ENC_TUNING_INFO = sys::NV_ENC_TUNING_INFO::NV_ENC_TUNING_INFO_LOW_LATENCY;
const INPUT_FORMAT: sys::NV_ENC_BUFFER_FORMAT =
    sys::NV_ENC_BUFFER_FORMAT::NV_ENC_BUFFER_FORMAT_NV12;

/// `NVENCSTATUS` as C returns it.
type Status = u32;
type RawEncoder = *mut c_void;

/// The NVENC entry points this module calls, out of the driver's table.
struct EncodeApi {
    open_encode_session_ex: unsafe extern "C" fn(
        *mut sys::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS,
        *mut RawEncoder,
    ) -> Status,
    get_encode_guid_count: unsafe extern "C" fn(RawEncoder, *mut u32) -> Status,
    get_encode_guids: unsafe extern "C" fn(RawEncoder, *mut GUID, u32, *mut u32) -> Status,
    get_encode_preset_config_ex: unsafe extern "C" fn(
        RawEncoder,
        GUID,
        GUID,
        sys::NV_ENC_TUNING_INFO,
        *mut sys::NV_ENC_PRESET_CONFIG,
    ) -> Status,
    initialize_encoder:
        unsafe extern "C" fn(RawEncoder, *mut sys::NV_ENC_INITIALIZE_PARAMS) -> Status,
    create_input_buffer:
        unsafe extern "C" fn(RawEncoder, *mut sys::NV_ENC_CREATE_INPUT_BUFFER) -> Status,
    destroy_input_buffer: unsafe extern "C" fn(RawEncoder, sys::NV_ENC_INPUT_PTR) -> Status,
    create_bitstream_buffer:
        unsafe extern "C" fn(RawEncoder, *mut sys::NV_ENC_CREATE_BITSTREAM_BUFFER) -> Status,
    destroy_bitstream_buffer: unsafe extern "C" fn(RawEncoder, sys::NV_ENC_OUTPUT_PTR) -> Status,
    encode_picture: unsafe extern "C" fn(RawEncoder, *mut sys::NV_ENC_PIC_PARAMS) -> Status,
    lock_bitstream: unsafe extern "C" fn(RawEncoder, *mut sys::NV_ENC_LOCK_BITSTREAM) -> Status,
    unlock_bitstream: unsafe extern "C" fn(RawEncoder, sys::NV_ENC_OUTPUT_PTR) -> Status,
    lock_input_buffer:
        unsafe extern "C" fn(RawEncoder, *mut sys::NV_ENC_LOCK_INPUT_BUFFER) -> Status,
    unlock_input_buffer: unsafe extern "C" fn(RawEncoder, sys::NV_ENC_INPUT_PTR) -> Status,
    destroy_encoder: unsafe extern "C" fn(RawEncoder) -> Status,
    get_last_error_string: unsafe extern "C" fn(RawEncoder) -> *const c_char,
}

/// Takes `$field` out of the driver's function list, re-typed to return
/// the status as `u32`. Naming the argument types here makes the compiler
/// check them against the bindings' prototype.
macro_rules! status_entry {
    ($list:expr, $field:ident, ($($arg:ty),*)) => {{
        let function = $list
            .$field
            .ok_or(Unavailable::MissingFunction(stringify!($field)))?;
        // SAFETY: only the return type changes, from the bindings'
        // `repr(u32)` mirror of the C enum NVENCSTATUS to u32. The callee is
        // C code returning that enum, an unsigned int, which is what a u32
        // return reads under the C ABI.
        unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn($($arg),*) -> NVENCSTATUS,
                unsafe extern "C" fn($($arg),*) -> Status,
            >(function)
        }
    }};
}

impl EncodeApi {
    fn from_list(list: &sys::NV_ENCODE_API_FUNCTION_LIST) -> Result<Self, Unavailable> {
        use sys::*;
        Ok(Self {
            open_encode_session_ex: status_entry!(
                list,
                nvEncOpenEncodeSessionEx,
                (*mut NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS, *mut RawEncoder)
            ),
            get_encode_guid_count: status_entry!(
                list,
                nvEncGetEncodeGUIDCount,
                (RawEncoder, *mut u32)
            ),
            get_encode_guids: status_entry!(
                list,
                nvEncGetEncodeGUIDs,
                (RawEncoder, *mut GUID, u32, *mut u32)
            ),
            get_encode_preset_config_ex: status_entry!(
                list,
                nvEncGetEncodePresetConfigEx,
                (
                    RawEncoder,
                    GUID,
                    GUID,
                    NV_ENC_TUNING_INFO,
                    *mut NV_ENC_PRESET_CONFIG
                )
            ),
            initialize_encoder: status_entry!(
                list,
                nvEncInitializeEncoder,
                (RawEncoder, *mut NV_ENC_INITIALIZE_PARAMS)
            ),
            create_input_buffer: status_entry!(
                list,
                nvEncCreateInputBuffer,
                (RawEncoder, *mut NV_ENC_CREATE_INPUT_BUFFER)
            ),
            destroy_input_buffer: status_entry!(
                list,
                nvEncDestroyInputBuffer,
                (RawEncoder, NV_ENC_INPUT_PTR)
            ),
            create_bitstream_buffer: status_entry!(
                list,
                nvEncCreateBitstreamBuffer,
                (RawEncoder, *mut NV_ENC_CREATE_BITSTREAM_BUFFER)
            ),
            destroy_bitstream_buffer: status_entry!(
                list,
                nvEncDestroyBitstreamBuffer,
                (RawEncoder, NV_ENC_OUTPUT_PTR)
            ),
            encode_picture: status_entry!(
                list,
                nvEncEncodePicture,
                (RawEncoder, *mut NV_ENC_PIC_PARAMS)
            ),
            lock_bitstream: status_entry!(
                list,
                nvEncLockBitstream,
                (RawEncoder, *mut NV_ENC_LOCK_BITSTREAM)
            ),
            unlock_bitstream: status_entry!(
                list,
                nvEncUnlockBitstream,
                (RawEncoder, NV_ENC_OUTPUT_PTR)
            ),
            lock_input_buffer: status_entry!(
                list,
                nvEncLockInputBuffer,
                (RawEncoder, *mut NV_ENC_LOCK_INPUT_BUFFER)
            ),
            unlock_input_buffer: status_entry!(
                list,
                nvEncUnlockInputBuffer,
                (RawEncoder, NV_ENC_INPUT_PTR)
            ),
            destroy_encoder: status_entry!(list, nvEncDestroyEncoder, (RawEncoder)),
            get_last_error_string: list
                .nvEncGetLastErrorString
                .ok_or(Unavailable::MissingFunction("nvEncGetLastErrorString"))?,
        })
    }
}

/// The driver's libraries, opened and initialised once per process.
struct Driver {
    max_api_version: ApiVersion,
    encode: EncodeApi,
    /// Keeps the function pointers above valid. The `Driver` lives in a
    /// static and is never dropped: unloading the driver's libraries while
    /// their threads run is not supported, and reloading would gain nothing.
    _library: Library,
}

static DRIVER: OnceLock<Result<Driver, Unavailable>> = OnceLock::new();

fn driver() -> Result<&'static Driver, Unavailable> {
    DRIVER
        .get_or_init(Driver::load)
        .as_ref()
        .map_err(Clone::clone)
}

impl Driver {
    fn load() -> Result<Self, Unavailable> {
        let nvenc_library = load_library(NVENC_LIBRARY)?;
        // SAFETY: the prototypes of the two functions nvEncodeAPI.h exports.
        let (get_max_supported_version, create_instance) = unsafe {
            (
                symbol::<unsafe extern "C" fn(*mut u32) -> Status>(
                    &nvenc_library,
                    NVENC_LIBRARY,
                    "NvEncodeAPIGetMaxSupportedVersion",
                )?,
                symbol::<unsafe extern "C" fn(*mut sys::NV_ENCODE_API_FUNCTION_LIST) -> Status>(
                    &nvenc_library,
                    NVENC_LIBRARY,
                    "NvEncodeAPICreateInstance",
                )?,
            )
        };
        let mut raw_version = 0;
        // SAFETY: writes one u32 through a valid pointer.
        let status = NvencStatus(unsafe { get_max_supported_version(&mut raw_version) });
        if status != NvencStatus::SUCCESS {
            return Err(Unavailable::Nvenc(NvencCallError {
                call: "NvEncodeAPIGetMaxSupportedVersion",
                status,
                detail: String::new(),
            }));
        }
        let max_api_version = ApiVersion::from_max_supported(raw_version);
        if max_api_version < ApiVersion::BUILT {
            return Err(Unavailable::DriverTooOld {
                driver: max_api_version,
                required: ApiVersion::BUILT,
            });
        }
        let mut list = sys::NV_ENCODE_API_FUNCTION_LIST::zeroed();
        list.version = sys::NV_ENCODE_API_FUNCTION_LIST_VER;
        // SAFETY: a versioned function list for the driver to fill in.
        let status = NvencStatus(unsafe { create_instance(&mut list) });
        if status != NvencStatus::SUCCESS {
            return Err(Unavailable::Nvenc(NvencCallError {
                call: "NvEncodeAPICreateInstance",
                status,
                detail: String::new(),
            }));
        }
        let encode = EncodeApi::from_list(&list)?;

        // NVENC sessions run on a CUDA context: without a working CUDA
        // driver there is no encoder either.
        cuda::cuda()?;
        tracing::debug!(%max_api_version, "NVIDIA driver loaded");
        Ok(Self {
            max_api_version,
            encode,
            _library: nvenc_library,
        })
    }
}

/// An NVENC session on the first CUDA device, able to encode H.264.
pub(super) struct Session {
    encoder: RawEncoder,
    driver: &'static Driver,
    /// Dropped after `Session::drop` has destroyed the encoder.
    device: Device,
}

impl Session {
    pub(super) fn open() -> Result<Self, Unavailable> {
        let driver = driver()?;
        let device = Device::first()?;
        let mut params = sys::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS::zeroed();
        params.version = sys::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS_VER;
        params.deviceType = sys::NV_ENC_DEVICE_TYPE::NV_ENC_DEVICE_TYPE_CUDA;
        params.device = device.context();
        params.apiVersion = ApiVersion::BUILT.to_session_word();
        let mut encoder = ptr::null_mut();
        // SAFETY: versioned parameters naming a retained CUDA context; the
        // driver writes the session handle into `encoder`.
        let status = NvencStatus(unsafe {
            (driver.encode.open_encode_session_ex)(&mut params, &mut encoder)
        });
        if status != NvencStatus::SUCCESS {
            if !encoder.is_null() {
                // The header asks for this even when opening failed.
                // SAFETY: a handle the driver just returned, destroyed once.
                let _ = unsafe { (driver.encode.destroy_encoder)(encoder) };
            }
            use NVENCSTATUS::*;
            return Err(
                if status.is(NV_ENC_ERR_NO_ENCODE_DEVICE)
                    || status.is(NV_ENC_ERR_UNSUPPORTED_DEVICE)
                {
                    Unavailable::NoEncoder {
                        device: device.name().to_owned(),
                        status,
                    }
                } else {
                    Unavailable::Nvenc(NvencCallError {
                        call: "nvEncOpenEncodeSessionEx",
                        status,
                        detail: String::new(),
                    })
                },
            );
        }
        let session = Session {
            encoder,
            driver,
            device,
        };
        if !session.encodes_h264().map_err(Unavailable::Nvenc)? {
            return Err(Unavailable::NoH264 {
                device: session.device.name().to_owned(),
            });
        }
        Ok(session)
    }

    pub(super) fn max_api_version(&self) -> ApiVersion {
        self.driver.max_api_version
    }

    pub(super) fn device_name(&self) -> &str {
        self.device.name()
    }

    fn api(&self) -> &'static EncodeApi {
        &self.driver.encode
    }

    fn check(&self, call: &'static str, status: Status) -> Result<(), NvencCallError> {
        let status = NvencStatus(status);
        if status == NvencStatus::SUCCESS {
            return Ok(());
        }
        Err(NvencCallError {
            call,
            status,
            detail: self.last_error(),
        })
    }

    fn last_error(&self) -> String {
        // SAFETY: a live session handle. The driver returns NULL or a
        // NUL-terminated string it owns until the next call on the session;
        // it is copied before any other call.
        let text = unsafe { (self.api().get_last_error_string)(self.encoder) };
        if text.is_null() {
            return String::new();
        }
        // SAFETY: see above.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }

    fn encodes_h264(&self) -> Result<bool, NvencCallError> {
        let api = self.api();
        let mut count = 0;
        // SAFETY: a live session handle; writes one u32.
        self.check("nvEncGetEncodeGUIDCount", unsafe {
            (api.get_encode_guid_count)(self.encoder, &mut count)
        })?;
        let mut guids = vec![GUID::default(); count as usize];
        let mut written = 0;
        // SAFETY: the array holds `count` GUIDs, the size passed; the driver
        // writes at most that many and their number into `written`.
        self.check("nvEncGetEncodeGUIDs", unsafe {
            (api.get_encode_guids)(self.encoder, guids.as_mut_ptr(), count, &mut written)
        })?;
        guids.truncate(written.min(count) as usize);
        Ok(guids.contains(&sys::NV_ENC_CODEC_H264_GUID))
    }

    fn preset_config(&self) -> Result<sys::NV_ENC_PRESET_CONFIG, NvencCallError> {
        let mut preset = blank_preset_config();
        // SAFETY: a live session handle and a versioned, initialised preset
        // config for the driver to fill in. The driver writes values of the
        // SDK version the structs carry, so its enums stay valid.
        self.check("nvEncGetEncodePresetConfigEx", unsafe {
            (self.api().get_encode_preset_config_ex)(
                self.encoder,
                sys::NV_ENC_CODEC_H264_GUID,
                PRESET,
                TUNING,
                &mut preset,
            )
        })?;
        Ok(preset)
    }

    fn warn_on_failure(&self, call: &'static str, status: Status) {
        if let Err(error) = self.check(call, status) {
            tracing::warn!(%error, "NVENC teardown");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: the handle from nvEncOpenEncodeSessionEx, destroyed once,
        // after the buffers of it (an `Encoder` drops its buffers before
        // its `Session`).
        let status = unsafe { (self.api().destroy_encoder)(self.encoder) };
        self.warn_on_failure("nvEncDestroyEncoder", status);
    }
}

/// One encoded picture, as NVENC returned it.
pub(super) struct EncodedOutput {
    pub(super) data: Vec<u8>,
    /// `NV_ENC_PIC_TYPE`, as the raw number the driver wrote.
    pub(super) picture_type: u32,
}

/// An initialised encoder with one input and one output buffer: without
/// B-frames or lookahead each picture's bitstream is ready when
/// `nvEncEncodePicture` returns, so one of each is enough.
pub(super) struct Encoder {
    input: sys::NV_ENC_INPUT_PTR,
    bitstream: sys::NV_ENC_OUTPUT_PTR,
    width: u32,
    height: u32,
    frames: u64,
    /// Dropped after `Encoder::drop` has destroyed the buffers.
    session: Session,
}

// SAFETY: the handles are used only through `&mut self`, so never from two
// threads at once, and an NVENC session is not tied to the thread that
// opened it: its CUDA context is passed explicitly and is current to none.
unsafe impl Send for Encoder {}

impl Encoder {
    pub(super) fn open(plan: &EncodePlan) -> Result<Self, EncodeError> {
        let session =
            Session::open().map_err(|reason| EncodeError::Unavailable(reason.to_string()))?;
        let mut preset = session.preset_config()?;
        apply_plan(plan, &mut preset.presetCfg);
        let mut init = initialize_params(plan, &mut preset.presetCfg);
        // SAFETY: a live, uninitialised session; `init` is versioned and
        // complete, and its `encodeConfig` points into `preset`, which
        // outlives the call.
        session.check("nvEncInitializeEncoder", unsafe {
            (session.api().initialize_encoder)(session.encoder, &mut init)
        })?;
        let mut encoder = Encoder {
            input: ptr::null_mut(),
            bitstream: ptr::null_mut(),
            width: plan.width,
            height: plan.height,
            frames: 0,
            session,
        };
        encoder.input = encoder.create_input_buffer()?;
        encoder.bitstream = encoder.create_bitstream_buffer()?;
        Ok(encoder)
    }

    pub(super) fn device_name(&self) -> &str {
        self.session.device_name()
    }

    fn create_input_buffer(&self) -> Result<sys::NV_ENC_INPUT_PTR, NvencCallError> {
        let mut params = sys::NV_ENC_CREATE_INPUT_BUFFER::zeroed();
        params.version = sys::NV_ENC_CREATE_INPUT_BUFFER_VER;
        params.width = self.width;
        params.height = self.height;
        params.bufferFmt = INPUT_FORMAT;
        // SAFETY: an initialised session; versioned parameters into which
        // the driver writes the buffer handle.
        self.session.check("nvEncCreateInputBuffer", unsafe {
            (self.session.api().create_input_buffer)(self.session.encoder, &mut params)
        })?;
        Ok(params.inputBuffer)
    }

    fn create_bitstream_buffer(&self) -> Result<sys::NV_ENC_OUTPUT_PTR, NvencCallError> {
        let mut params = sys::NV_ENC_CREATE_BITSTREAM_BUFFER::zeroed();
        params.version = sys::NV_ENC_CREATE_BITSTREAM_BUFFER_VER;
        // SAFETY: an initialised session; versioned parameters into which
        // the driver writes the buffer handle.
        self.session.check("nvEncCreateBitstreamBuffer", unsafe {
            (self.session.api().create_bitstream_buffer)(self.session.encoder, &mut params)
        })?;
        Ok(params.bitstreamBuffer)
    }

    pub(super) fn encode(
        &mut self,
        picture: &Picture,
        force_idr: bool,
    ) -> Result<EncodedOutput, EncodeError> {
        let pitch = self.upload(picture)?;
        let mut params = pic_params();
        params.inputWidth = self.width;
        params.inputHeight = self.height;
        params.inputPitch = pitch;
        params.inputBuffer = self.input;
        params.outputBitstream = self.bitstream;
        params.bufferFmt = INPUT_FORMAT;
        params.inputTimeStamp = self.frames;
        // Only echoed back in the lock: wrapping after 2^32 frames is fine.
        params.frameIdx = self.frames as u32;
        if force_idr {
            use sys::NV_ENC_PIC_FLAGS::*;
            params.encodePicFlags =
                NV_ENC_PIC_FLAG_FORCEIDR as u32 | NV_ENC_PIC_FLAG_OUTPUT_SPSPPS as u32;
        }
        // SAFETY: an initialised session; versioned, complete parameters
        // naming this session's own buffers, the input one unlocked.
        let status =
            unsafe { (self.session.api().encode_picture)(self.session.encoder, &mut params) };
        self.frames += 1;
        if NvencStatus(status).is(NVENCSTATUS::NV_ENC_ERR_NEED_MORE_INPUT) {
            return Err(EncodeError::Codec(
                "NVENC held a picture back although reordering and lookahead are off".into(),
            ));
        }
        self.session.check("nvEncEncodePicture", status)?;
        self.read_bitstream()
    }

    /// Copies `picture` into the input buffer as NV12; returns the pitch.
    fn upload(&mut self, picture: &Picture) -> Result<u32, EncodeError> {
        let api = self.session.api();
        let mut lock = sys::NV_ENC_LOCK_INPUT_BUFFER::zeroed();
        lock.version = sys::NV_ENC_LOCK_INPUT_BUFFER_VER;
        lock.inputBuffer = self.input;
        // SAFETY: versioned parameters naming this session's input buffer,
        // which is unlocked (every lock here is paired with an unlock).
        self.session.check("nvEncLockInputBuffer", unsafe {
            (api.lock_input_buffer)(self.session.encoder, &mut lock)
        })?;
        let pitch = lock.pitch as usize;
        let written = if lock.bufferDataPtr.is_null() {
            Err(EncodeError::Codec(
                "nvEncLockInputBuffer returned no memory".into(),
            ))
        } else {
            // SAFETY: while the buffer is locked NVENC lends out its NV12
            // surface: `height` luma rows, then `height / 2` interleaved
            // chroma rows, every row `pitch` bytes, for a buffer created as
            // NV12 at this size. Nothing else touches it until the unlock
            // below, and the slice does not outlive this block.
            let surface = unsafe {
                std::slice::from_raw_parts_mut(
                    lock.bufferDataPtr.cast::<u8>(),
                    nv12_len(pitch, self.height),
                )
            };
            write_nv12(picture, surface, pitch)
                .map_err(|error| EncodeError::Codec(error.to_string()))
        };
        // SAFETY: unlocks the buffer locked above; the surface slice is gone.
        let unlocked = self.session.check("nvEncUnlockInputBuffer", unsafe {
            (api.unlock_input_buffer)(self.session.encoder, self.input)
        });
        written?;
        unlocked?;
        Ok(lock.pitch)
    }

    fn read_bitstream(&mut self) -> Result<EncodedOutput, EncodeError> {
        let api = self.session.api();
        let mut lock = MaybeUninit::<sys::NV_ENC_LOCK_BITSTREAM>::zeroed();
        let lock_ptr = lock.as_mut_ptr();
        // SAFETY: field writes into the zeroed allocation through raw
        // pointers, never claiming the whole is valid (its pictureStruct
        // has no zero variant).
        unsafe {
            (&raw mut (*lock_ptr).version).write(sys::NV_ENC_LOCK_BITSTREAM_VER);
            (&raw mut (*lock_ptr).outputBitstream).write(self.bitstream);
        }
        // SAFETY: versioned parameters naming this session's bitstream
        // buffer, which holds the picture just encoded; `doNotWait` is 0,
        // so the call waits for it. The driver fills in the results.
        self.session.check("nvEncLockBitstream", unsafe {
            (api.lock_bitstream)(self.session.encoder, lock_ptr)
        })?;
        // SAFETY: plain fields the driver wrote, read one by one;
        // `pictureType` is read as the unsigned int it is in C.
        let (data, size, picture_type) = unsafe {
            (
                (&raw const (*lock_ptr).bitstreamBufferPtr).read(),
                (&raw const (*lock_ptr).bitstreamSizeInBytes).read(),
                (&raw const (*lock_ptr).pictureType).cast::<u32>().read(),
            )
        };
        let copied = match (data.is_null(), size) {
            (_, 0) => Ok(Vec::new()),
            (true, _) => Err(EncodeError::Codec(
                "nvEncLockBitstream returned no memory".into(),
            )),
            (false, size) => {
                // SAFETY: while the bitstream is locked, `data` holds `size`
                // bytes of it; they are copied before the unlock.
                Ok(
                    unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size as usize) }
                        .to_vec(),
                )
            }
        };
        // SAFETY: unlocks the bitstream locked above; nothing borrows it.
        let unlocked = self.session.check("nvEncUnlockBitstream", unsafe {
            (api.unlock_bitstream)(self.session.encoder, self.bitstream)
        });
        let data = copied?;
        unlocked?;
        Ok(EncodedOutput { data, picture_type })
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        let api = self.session.api();
        let encoder = self.session.encoder;
        if !self.input.is_null() && !self.bitstream.is_null() {
            // The header asks for an end-of-stream picture before teardown.
            let mut end = pic_params();
            end.encodePicFlags = sys::NV_ENC_PIC_FLAGS::NV_ENC_PIC_FLAG_EOS as u32;
            // SAFETY: an initialised session; an end-of-stream picture
            // carries no buffers.
            let status = unsafe { (api.encode_picture)(encoder, &mut end) };
            self.session
                .warn_on_failure("nvEncEncodePicture(EOS)", status);
        }
        if !self.input.is_null() {
            // SAFETY: this session's unlocked input buffer, destroyed once.
            let status = unsafe { (api.destroy_input_buffer)(encoder, self.input) };
            self.session
                .warn_on_failure("nvEncDestroyInputBuffer", status);
        }
        if !self.bitstream.is_null() {
            // SAFETY: this session's unlocked bitstream buffer, destroyed once.
            let status = unsafe { (api.destroy_bitstream_buffer)(encoder, self.bitstream) };
            self.session
                .warn_on_failure("nvEncDestroyBitstreamBuffer", status);
        }
    }
}

/// Writes the plan into a preset configuration.
fn apply_plan(plan: &EncodePlan, config: &mut sys::NV_ENC_CONFIG) {
    config.profileGUID = sys::NV_ENC_H264_PROFILE_HIGH_GUID;
    config.gopLength = plan.gop_length;
    // A P picture after every I/P picture: no B-frames, no reordering.
    config.frameIntervalP = 1;
    let rc = &mut config.rcParams;
    rc.rateControlMode = sys::NV_ENC_PARAMS_RC_MODE::NV_ENC_PARAMS_RC_CBR;
    rc.averageBitRate = plan.bitrate_bps;
    rc.maxBitRate = plan.bitrate_bps;
    rc.vbvBufferSize = plan.vbv_buffer_bits;
    rc.vbvInitialDelay = plan.vbv_buffer_bits;
    // Lookahead would hold pictures back; one picture in, one out.
    rc.set_enableLookahead(0);
    rc.set_zeroReorderDelay(1);
    // SAFETY: `h264Config` is the union's active member: the config came
    // from nvEncGetEncodePresetConfigEx for the H.264 codec (or is the
    // all-zero blank, which is a valid `NV_ENC_CONFIG_H264`: every enum in
    // it has a zero variant).
    let h264 = unsafe { &mut config.encodeCodecConfig.h264Config };
    h264.idrPeriod = plan.gop_length;
    h264.set_repeatSPSPPS(1);
    h264.level = plan.level as u32;
    // 0 leaves the DPB size to the driver, which keeps within the level.
    if h264.maxNumRefFrames > plan.max_ref_frames {
        h264.maxNumRefFrames = plan.max_ref_frames;
    }
    // The compositor's pictures are BT.601, limited range.
    let vui = &mut h264.h264VUIParameters;
    vui.videoSignalTypePresentFlag = 1;
    vui.videoFormat = sys::NV_ENC_VUI_VIDEO_FORMAT::NV_ENC_VUI_VIDEO_FORMAT_UNSPECIFIED;
    vui.videoFullRangeFlag = 0;
    vui.colourDescriptionPresentFlag = 1;
    vui.colourPrimaries = sys::NV_ENC_VUI_COLOR_PRIMARIES::NV_ENC_VUI_COLOR_PRIMARIES_SMPTE170M;
    vui.transferCharacteristics =
        sys::NV_ENC_VUI_TRANSFER_CHARACTERISTIC::NV_ENC_VUI_TRANSFER_CHARACTERISTIC_SMPTE170M;
    vui.colourMatrix = sys::NV_ENC_VUI_MATRIX_COEFFS::NV_ENC_VUI_MATRIX_COEFFS_SMPTE170M;
}

/// The session parameters for `plan`, configured by `config`, which must
/// outlive their use.
fn initialize_params(
    plan: &EncodePlan,
    config: &mut sys::NV_ENC_CONFIG,
) -> sys::NV_ENC_INITIALIZE_PARAMS {
    let mut params = sys::NV_ENC_INITIALIZE_PARAMS::zeroed();
    params.version = sys::NV_ENC_INITIALIZE_PARAMS_VER;
    params.encodeGUID = sys::NV_ENC_CODEC_H264_GUID;
    params.presetGUID = PRESET;
    params.tuningInfo = TUNING;
    params.encodeWidth = plan.width;
    params.encodeHeight = plan.height;
    params.darWidth = plan.width;
    params.darHeight = plan.height;
    params.maxEncodeWidth = plan.width;
    params.maxEncodeHeight = plan.height;
    params.frameRateNum = plan.fps;
    params.frameRateDen = 1;
    // Synchronous: Linux has no asynchronous mode.
    params.enableEncodeAsync = 0;
    // The encoder decides picture types (IDR cadence from the config).
    params.enablePTD = 1;
    params.bufferFormat = INPUT_FORMAT;
    params.encodeConfig = config;
    params
}

/// Structures for which all-zero bytes are a valid value.
///
/// # Safety
/// Every field must accept the all-zero bit pattern: integers, raw
/// pointers, `Option` of function pointers, bitfield storage, unions, and
/// enums that have a variant with discriminant 0.
unsafe trait ZeroIsValid: Sized {
    fn zeroed() -> Self {
        // SAFETY: the trait's contract.
        unsafe { std::mem::zeroed() }
    }
}

// SAFETY: u32s, pointers and `Option` function pointers.
unsafe impl ZeroIsValid for sys::NV_ENCODE_API_FUNCTION_LIST {}
// SAFETY: u32s and pointers; `deviceType` has NV_ENC_DEVICE_TYPE_DIRECTX = 0.
unsafe impl ZeroIsValid for sys::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS {}
// SAFETY: u32s, GUIDs, pointers and bitfields; its enums have zero variants
// (NV_ENC_TUNING_INFO_UNDEFINED, NV_ENC_BUFFER_FORMAT_UNDEFINED,
// NV_ENC_OUTPUT_STATS_NONE).
unsafe impl ZeroIsValid for sys::NV_ENC_INITIALIZE_PARAMS {}
// SAFETY: u32s and pointers; NV_ENC_MEMORY_HEAP_AUTOSELECT and
// NV_ENC_BUFFER_FORMAT_UNDEFINED are 0.
unsafe impl ZeroIsValid for sys::NV_ENC_CREATE_INPUT_BUFFER {}
// SAFETY: u32s and pointers; NV_ENC_MEMORY_HEAP_AUTOSELECT is 0.
unsafe impl ZeroIsValid for sys::NV_ENC_CREATE_BITSTREAM_BUFFER {}
// SAFETY: u32s, bitfields and pointers.
unsafe impl ZeroIsValid for sys::NV_ENC_LOCK_INPUT_BUFFER {}

/// A preset configuration with only its versions set, for the driver to
/// fill in.
fn blank_preset_config() -> sys::NV_ENC_PRESET_CONFIG {
    let mut blank = MaybeUninit::<sys::NV_ENC_PRESET_CONFIG>::zeroed();
    let config = blank.as_mut_ptr();
    // SAFETY: field writes through raw pointers into the zeroed allocation.
    // Zero is valid for every field except `frameFieldMode` (its enum
    // starts at 1), which is written before the value is assumed valid.
    unsafe {
        (&raw mut (*config).version).write(sys::NV_ENC_PRESET_CONFIG_VER);
        (&raw mut (*config).presetCfg.version).write(sys::NV_ENC_CONFIG_VER);
        (&raw mut (*config).presetCfg.frameFieldMode)
            .write(sys::NV_ENC_PARAMS_FRAME_FIELD_MODE::NV_ENC_PARAMS_FRAME_FIELD_MODE_FRAME);
        blank.assume_init()
    }
}

/// Versioned, otherwise empty, progressive picture parameters.
fn pic_params() -> sys::NV_ENC_PIC_PARAMS {
    let mut params = MaybeUninit::<sys::NV_ENC_PIC_PARAMS>::zeroed();
    let fields = params.as_mut_ptr();
    // SAFETY: as in `blank_preset_config`: zero is valid for every field
    // except `pictureStruct`, written before the value is assumed valid.
    unsafe {
        (&raw mut (*fields).version).write(sys::NV_ENC_PIC_PARAMS_VER);
        (&raw mut (*fields).pictureStruct).write(sys::NV_ENC_PIC_STRUCT::NV_ENC_PIC_STRUCT_FRAME);
        params.assume_init()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::DriverError;
    use crate::nvenc::{probe, NvencEncoder, Probe};
    use crate::EncoderSettings;

    fn plan_720p() -> EncodePlan {
        EncodePlan {
            width: 1280,
            height: 720,
            fps: 30,
            gop_length: 60,
            bitrate_bps: 2_500_000,
            vbv_buffer_bits: 2_500_000,
            level: sys::NV_ENC_LEVEL::NV_ENC_LEVEL_H264_31,
            max_ref_frames: 5,
        }
    }

    #[test]
    fn plan_turns_a_preset_into_cbr_idr_cadence_and_repeated_parameter_sets() {
        let mut preset = blank_preset_config();
        assert_eq!(preset.version, sys::NV_ENC_PRESET_CONFIG_VER);
        preset
            .presetCfg
            .encodeCodecConfig
            .h264Config
            .maxNumRefFrames = 16;
        apply_plan(&plan_720p(), &mut preset.presetCfg);
        let config = &preset.presetCfg;
        assert_eq!(config.version, sys::NV_ENC_CONFIG_VER);
        assert_eq!(config.profileGUID, sys::NV_ENC_H264_PROFILE_HIGH_GUID);
        assert_eq!((config.gopLength, config.frameIntervalP), (60, 1));
        let rc = &config.rcParams;
        assert_eq!(
            rc.rateControlMode,
            sys::NV_ENC_PARAMS_RC_MODE::NV_ENC_PARAMS_RC_CBR
        );
        assert_eq!(
            (
                rc.averageBitRate,
                rc.maxBitRate,
                rc.vbvBufferSize,
                rc.vbvInitialDelay
            ),
            (2_500_000, 2_500_000, 2_500_000, 2_500_000)
        );
        assert_eq!((rc.enableLookahead(), rc.zeroReorderDelay()), (0, 1));
        // SAFETY: `apply_plan` wrote the H.264 member.
        let h264 = unsafe { config.encodeCodecConfig.h264Config };
        assert_eq!(h264.idrPeriod, 60);
        assert_eq!(h264.repeatSPSPPS(), 1);
        assert_eq!((h264.outputAUD(), h264.disableSPSPPS()), (0, 0));
        assert_eq!(h264.level, 31);
        assert_eq!(h264.maxNumRefFrames, 5);
        let vui = h264.h264VUIParameters;
        assert_eq!(
            (vui.videoSignalTypePresentFlag, vui.videoFullRangeFlag),
            (1, 0)
        );
        assert_eq!(
            vui.colourMatrix,
            sys::NV_ENC_VUI_MATRIX_COEFFS::NV_ENC_VUI_MATRIX_COEFFS_SMPTE170M
        );
    }

    #[test]
    fn plan_keeps_a_driver_chosen_dpb_within_the_level() {
        let mut preset = blank_preset_config();
        apply_plan(&plan_720p(), &mut preset.presetCfg);
        // SAFETY: `apply_plan` wrote the H.264 member.
        let refs = unsafe {
            preset
                .presetCfg
                .encodeCodecConfig
                .h264Config
                .maxNumRefFrames
        };
        assert_eq!(refs, 0, "0 (driver default) stays 0");
    }

    #[test]
    fn initialize_params_describe_the_plan_and_point_at_its_config() {
        let mut preset = blank_preset_config();
        let config_address: *const sys::NV_ENC_CONFIG = &preset.presetCfg;
        let params = initialize_params(&plan_720p(), &mut preset.presetCfg);
        assert_eq!(params.version, sys::NV_ENC_INITIALIZE_PARAMS_VER);
        assert_eq!(params.encodeGUID, sys::NV_ENC_CODEC_H264_GUID);
        assert_eq!(params.presetGUID, sys::NV_ENC_PRESET_P4_GUID);
        assert_eq!(params.tuningInfo, TUNING);
        assert_eq!((params.encodeWidth, params.encodeHeight), (1280, 720));
        assert_eq!((params.maxEncodeWidth, params.maxEncodeHeight), (1280, 720));
        assert_eq!((params.frameRateNum, params.frameRateDen), (30, 1));
        assert_eq!((params.enablePTD, params.enableEncodeAsync), (1, 0));
        assert_eq!(params.bufferFormat, INPUT_FORMAT);
        assert_eq!(params.encodeConfig.cast_const(), config_address);
    }

    #[test]
    fn picture_parameters_start_progressive_and_versioned() {
        let params = pic_params();
        assert_eq!(params.version, sys::NV_ENC_PIC_PARAMS_VER);
        assert_eq!(
            params.pictureStruct,
            sys::NV_ENC_PIC_STRUCT::NV_ENC_PIC_STRUCT_FRAME
        );
        assert_eq!((params.encodePicFlags, params.inputPitch), (0, 0));
        assert!(params.inputBuffer.is_null() && params.outputBitstream.is_null());
    }

    fn nvenc_library_loads() -> bool {
        // SAFETY: the NVIDIA driver's library, as in `load_library`.
        unsafe { Library::new(NVENC_LIBRARY) }.is_ok()
    }

    #[test]
    fn probe_names_the_missing_library_on_machines_without_the_driver() {
        let probed = probe();
        if nvenc_library_loads() {
            assert!(
                !matches!(
                    probed,
                    Probe::Unavailable(Unavailable::Driver(DriverError::LibraryMissing {
                        library: NVENC_LIBRARY,
                        ..
                    }))
                ),
                "{probed:?}"
            );
        } else {
            let Probe::Unavailable(reason) = probed else {
                panic!("available without {NVENC_LIBRARY}: {probed:?}");
            };
            assert!(
                matches!(&reason, Unavailable::Driver(DriverError::LibraryMissing { library: NVENC_LIBRARY, detail }) if !detail.is_empty()),
                "{reason:?}"
            );
            assert!(reason.to_string().starts_with(
                "libnvidia-encode.so.1 could not be loaded (is the NVIDIA driver installed?): "
            ));
        }
    }

    /// Without the driver: `Unavailable` naming the library. With it: the
    /// encoder opens and makes an IDR picture from a black frame, or (a GPU
    /// without NVENC, such as an H100) refuses with a reason that is not
    /// the missing library. Either way, never a crash.
    #[test]
    fn open_is_unavailable_without_the_driver_and_encodes_or_says_why_with_it() {
        let settings = EncoderSettings {
            width: 640,
            height: 360,
            fps: 30,
            bitrate_bps: 800_000,
            gop_frames: 60,
        };
        let opened = NvencEncoder::open(settings);
        if !nvenc_library_loads() {
            assert!(
                matches!(&opened, Err(EncodeError::Unavailable(reason)) if reason.contains(NVENC_LIBRARY)),
                "{:?}",
                opened.err()
            );
            return;
        }
        match opened {
            Ok(mut encoder) => {
                use crate::VideoEncoder;
                let black = crate::Picture::filled(640, 360, crate::Yuv::BLACK);
                let frame = encoder
                    .encode(&black, true)
                    .expect("a forced key frame encodes")
                    .expect("a forced key frame is not skipped");
                assert!(frame.keyframe);
                assert!(
                    frame.data.starts_with(&[0, 0, 0, 1]) || frame.data.starts_with(&[0, 0, 1])
                );
            }
            Err(EncodeError::Unavailable(reason)) => {
                assert!(!reason.contains(NVENC_LIBRARY), "{reason}");
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("neither an encoder nor a reason: {other:?}"),
        }
    }
}
