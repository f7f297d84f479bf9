//! The CUDA driver, opened at run time: what NVENC and NVDEC both stand on.
//!
//! `libcuda.so.1` is opened with `libloading` on first use and kept for the
//! life of the process (unloading it while its threads run is not
//! supported), so a binary built with the `nvenc` feature still starts on
//! machines without the NVIDIA driver. [`Device::first`] retains the first
//! device's primary context, which the video engines share.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use libloading::Library;

pub(crate) const CUDA_LIBRARY: &str = "libcuda.so.1";

/// `CUresult`; 0 is `CUDA_SUCCESS`.
pub(crate) type CuResult = c_uint;
type CuDevice = c_int;
pub(crate) type CuContext = *mut c_void;
const CUDA_SUCCESS: CuResult = 0;
const CUDA_ERROR_NO_DEVICE: CuResult = 100;

/// Why the NVIDIA driver cannot be used here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error("{library} could not be loaded (is the NVIDIA driver installed?): {detail}")]
    LibraryMissing {
        library: &'static str,
        detail: String,
    },
    #[error("{library} has no {symbol} (driver too old?): {detail}")]
    SymbolMissing {
        library: &'static str,
        symbol: &'static str,
        detail: String,
    },
    #[error("no CUDA device")]
    NoCudaDevice,
    #[error("CUDA {call} failed: {error}")]
    Cuda { call: &'static str, error: String },
}

pub(crate) fn load_library(name: &'static str) -> Result<Library, DriverError> {
    // SAFETY: loading runs the library's initialisers. These are the NVIDIA
    // driver's own libraries, which expect to be opened at run time (that
    // is how the CUDA runtime and NVIDIA's samples reach them).
    unsafe { Library::new(name) }.map_err(|error| DriverError::LibraryMissing {
        library: name,
        detail: error.to_string(),
    })
}

/// Looks `name` up in `library` and copies the function pointer out.
///
/// # Safety
/// `T` must be the function pointer type of `name`'s C prototype, and
/// `library` must stay loaded for as long as the pointer is used (the
/// driver's libraries are kept in statics and never unloaded).
pub(crate) unsafe fn symbol<T: Copy>(
    library: &Library,
    library_name: &'static str,
    name: &'static str,
) -> Result<T, DriverError> {
    // SAFETY: the caller vouches for `T`.
    unsafe { library.get::<T>(name.as_bytes()) }
        .map(|found| *found)
        .map_err(|error| DriverError::SymbolMissing {
            library: library_name,
            symbol: name,
            detail: error.to_string(),
        })
}

/// The CUDA driver API entry points kiroku calls (prototypes from `cuda.h`).
pub(crate) struct Cuda {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    ctx_push_current: unsafe extern "C" fn(CuContext) -> CuResult,
    ctx_pop_current: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    get_error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    /// Keeps the function pointers above valid; never dropped (a static).
    _library: Library,
}

static CUDA: OnceLock<Result<Cuda, DriverError>> = OnceLock::new();

/// The CUDA driver, loaded and initialised once per process.
pub(crate) fn cuda() -> Result<&'static Cuda, DriverError> {
    CUDA.get_or_init(Cuda::load).as_ref().map_err(Clone::clone)
}

impl Cuda {
    fn load() -> Result<Self, DriverError> {
        let library = load_library(CUDA_LIBRARY)?;
        // SAFETY: each type is the C prototype of the named function in
        // cuda.h (the `_v2` names are what the header's macros select).
        let cuda = unsafe {
            Self {
                init: symbol(&library, CUDA_LIBRARY, "cuInit")?,
                device_get_count: symbol(&library, CUDA_LIBRARY, "cuDeviceGetCount")?,
                device_get: symbol(&library, CUDA_LIBRARY, "cuDeviceGet")?,
                device_get_name: symbol(&library, CUDA_LIBRARY, "cuDeviceGetName")?,
                primary_ctx_retain: symbol(&library, CUDA_LIBRARY, "cuDevicePrimaryCtxRetain")?,
                primary_ctx_release: symbol(
                    &library,
                    CUDA_LIBRARY,
                    "cuDevicePrimaryCtxRelease_v2",
                )?,
                ctx_push_current: symbol(&library, CUDA_LIBRARY, "cuCtxPushCurrent_v2")?,
                ctx_pop_current: symbol(&library, CUDA_LIBRARY, "cuCtxPopCurrent_v2")?,
                get_error_name: symbol(&library, CUDA_LIBRARY, "cuGetErrorName")?,
                _library: library,
            }
        };
        // SAFETY: cuInit takes flags, which must be 0.
        match unsafe { (cuda.init)(0) } {
            CUDA_ERROR_NO_DEVICE => return Err(DriverError::NoCudaDevice),
            result => cuda.check("cuInit", result)?,
        }
        Ok(cuda)
    }

    pub(crate) fn check(&self, call: &'static str, result: CuResult) -> Result<(), DriverError> {
        if result == CUDA_SUCCESS {
            return Ok(());
        }
        let mut name: *const c_char = ptr::null();
        // SAFETY: writes one pointer; on success it points to a static,
        // NUL-terminated string inside the driver.
        let named = unsafe { (self.get_error_name)(result, &mut name) } == CUDA_SUCCESS;
        let error = if named && !name.is_null() {
            // SAFETY: see above.
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
            format!("{name} ({result})")
        } else {
            format!("CUresult {result}")
        };
        Err(DriverError::Cuda { call, error })
    }
}

/// The first CUDA device, with its primary context retained while this
/// lives. NVENC wants a floating context (current to no thread): the
/// primary context is one as long as nobody leaves it current, and sharing
/// it spares each session a context of its own, which costs GPU memory.
pub(crate) struct Device {
    cuda: &'static Cuda,
    ordinal: CuDevice,
    context: CuContext,
    name: String,
}

impl Device {
    pub(crate) fn first() -> Result<Self, DriverError> {
        let cuda = cuda()?;
        let mut count = 0;
        // SAFETY: writes one int.
        cuda.check("cuDeviceGetCount", unsafe {
            (cuda.device_get_count)(&mut count)
        })?;
        if count < 1 {
            return Err(DriverError::NoCudaDevice);
        }
        let mut ordinal = 0;
        // SAFETY: writes one CUdevice; index 0 exists since count ≥ 1.
        cuda.check("cuDeviceGet", unsafe { (cuda.device_get)(&mut ordinal, 0) })?;
        let mut name = [0u8; 256];
        // SAFETY: the buffer holds the length passed; the driver writes a
        // NUL-terminated name within it.
        cuda.check("cuDeviceGetName", unsafe {
            (cuda.device_get_name)(name.as_mut_ptr().cast(), name.len() as c_int, ordinal)
        })?;
        let name = CStr::from_bytes_until_nul(&name)
            .map(|text| text.to_string_lossy().into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(&name).into_owned());
        let mut context = ptr::null_mut();
        // SAFETY: writes one CUcontext for a device that exists.
        cuda.check("cuDevicePrimaryCtxRetain", unsafe {
            (cuda.primary_ctx_retain)(&mut context, ordinal)
        })?;
        Ok(Self {
            cuda,
            ordinal,
            context,
            name,
        })
    }

    pub(crate) fn context(&self) -> CuContext {
        self.context
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Runs `call` with the primary context current to this thread, and
    /// leaves it floating again afterwards (NVDEC's calls need a current
    /// context; NVENC's do not).
    pub(crate) fn with_current<R>(&self, call: impl FnOnce() -> R) -> Result<R, DriverError> {
        let cuda = self.cuda;
        // SAFETY: a context retained by this `Device`, still alive.
        cuda.check("cuCtxPushCurrent", unsafe {
            (cuda.ctx_push_current)(self.context)
        })?;
        let result = call();
        let mut popped = ptr::null_mut();
        // SAFETY: pops the context pushed above; writes one pointer.
        cuda.check("cuCtxPopCurrent", unsafe {
            (cuda.ctx_pop_current)(&mut popped)
        })?;
        Ok(result)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: balances the retain in `first`; the sessions that used
        // the context were destroyed before (they are dropped first).
        let result = unsafe { (self.cuda.primary_ctx_release)(self.ordinal) };
        if let Err(error) = self.cuda.check("cuDevicePrimaryCtxRelease", result) {
            tracing::warn!(%error, "releasing the CUDA context failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_driver_the_error_names_libcuda() {
        // SAFETY: the NVIDIA driver's library, as in `load_library`.
        if unsafe { Library::new(CUDA_LIBRARY) }.is_ok() {
            // A machine with the driver: a device or a reason, never a crash.
            match Device::first() {
                Ok(device) => assert!(!device.name().is_empty()),
                Err(error) => assert!(!error.to_string().is_empty()),
            }
            return;
        }
        let Err(error) = Device::first() else {
            panic!("a CUDA device without {CUDA_LIBRARY}");
        };
        assert!(
            matches!(&error, DriverError::LibraryMissing { library: CUDA_LIBRARY, detail } if !detail.is_empty()),
            "{error:?}"
        );
    }
}
