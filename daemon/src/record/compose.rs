//! Which compositor mixed-stream tasks paint with, chosen once at start-up
//! (`recording.compositor`).
//!
//! - `cpu`, or `auto` without a hardware GPU: every task gets its own CPU
//!   compositor, running on the task's recorder thread.
//! - A GPU (`auto` finds a hardware adapter, or `gpu` forces any adapter,
//!   software rasterisers included): one wgpu compositor on its own thread
//!   serves every task; scenes that arrive together are composed in one
//!   dispatch. If `gpu` is forced and no adapter opens, the daemon logs why
//!   and uses the CPU rather than refusing to record.

use kiroku_gpu::cpu::CpuCompositor;
use kiroku_gpu::select::{select_compositor, CompositorChoice};
use kiroku_gpu::service::{CompositorHandle, CompositorService, ServiceConfig};
use kiroku_gpu::{ComposeError, Compositor, Picture, Scene, Yuv};

use crate::config::CompositorPreference;

/// Hands every mixed task its compositor.
pub struct CompositorSource {
    shared: std::sync::Mutex<Option<CompositorHandle>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// What was chosen and why, for the start-up log.
    pub description: String,
}

impl CompositorSource {
    pub fn new(preference: CompositorPreference) -> Self {
        let choice = match preference {
            CompositorPreference::Auto => CompositorChoice::Auto,
            CompositorPreference::Cpu => CompositorChoice::Cpu,
            CompositorPreference::Gpu => CompositorChoice::Gpu,
        };
        let selection = match select_compositor(choice) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "recording.compositor = \"gpu\" but no GPU adapter opens; using the CPU compositor");
                return Self::cpu(format!("cpu (GPU unavailable: {e})"));
            }
        };
        if selection.gpu.is_none() {
            return Self::cpu(selection.reason);
        }
        match CompositorService::spawn_joinable(selection.compositor, ServiceConfig::default()) {
            Ok((handle, thread)) => Self {
                shared: std::sync::Mutex::new(Some(handle)),
                thread: std::sync::Mutex::new(Some(thread)),
                description: selection.reason,
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the compositor thread; using the CPU compositor");
                Self::cpu(format!("cpu (compositor thread: {e})"))
            }
        }
    }

    fn cpu(description: String) -> Self {
        Self {
            shared: std::sync::Mutex::new(None),
            thread: std::sync::Mutex::new(None),
            description,
        }
    }

    pub fn create(&self) -> Box<dyn Compositor> {
        let shared = self.shared.lock().ok().and_then(|s| s.clone());
        match shared {
            Some(handle) => Box::new(SharedCompositor { handle }),
            None => Box::new(CpuCompositor::new()),
        }
    }

    /// At shutdown, after the recorders stopped: lets the shared GPU
    /// compositor's thread end and waits (up to `wait`) until it has
    /// released the device, so that the process never exits while a GPU
    /// device is alive. Later tasks (none at shutdown) would get the CPU.
    pub fn release(&self, wait: std::time::Duration) {
        if let Ok(mut shared) = self.shared.lock() {
            shared.take();
        }
        let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) else {
            return;
        };
        let deadline = std::time::Instant::now() + wait;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!("the GPU compositor is still in use at shutdown");
        }
    }
}

/// A task's view of the shared GPU compositor.
struct SharedCompositor {
    handle: CompositorHandle,
}

impl Compositor for SharedCompositor {
    fn name(&self) -> &'static str {
        self.handle.backend()
    }

    fn compose(&mut self, scenes: &[Scene], outputs: &mut [Picture]) -> Result<(), ComposeError> {
        if scenes.len() != outputs.len() {
            return Err(ComposeError::BatchMismatch(scenes.len(), outputs.len()));
        }
        for (scene, output) in scenes.iter().zip(outputs.iter_mut()) {
            // The service owns the picture while it paints; an empty
            // placeholder (no allocation) stands in meanwhile.
            let canvas = std::mem::replace(output, Picture::filled(0, 0, Yuv::BLACK));
            *output = self.handle.compose(scene.clone(), canvas)?;
        }
        Ok(())
    }
}

/// Opens the H.264 encoder of a mixed task's canvas: NVENC when the daemon
/// is built with the `nvenc` feature and the GPU has an encoder (probed
/// once, at the first mixed task), OpenH264 on the CPU otherwise.
pub fn open_encoder(
    settings: kiroku_gpu::EncoderSettings,
) -> Result<Box<dyn kiroku_gpu::VideoEncoder>, kiroku_gpu::EncodeError> {
    #[cfg(feature = "nvenc")]
    if nvenc_available() {
        match kiroku_gpu::nvenc::NvencEncoder::open(settings) {
            Ok(e) => return Ok(Box::new(e)),
            Err(e) => {
                tracing::warn!(error = %e, "NVENC could not open an encoder; using OpenH264")
            }
        }
    }
    Ok(Box::new(crate::media::h264_codec::OpenH264Encoder::open(
        settings,
    )?))
}

#[cfg(feature = "nvenc")]
fn nvenc_available() -> bool {
    static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBE.get_or_init(|| match kiroku_gpu::nvenc::probe() {
        kiroku_gpu::nvenc::Probe::Available {
            max_api_version,
            device_name,
        } => {
            tracing::info!(device = %device_name, api = ?max_api_version, "NVENC available: mixed-stream video is encoded on the GPU");
            true
        }
        kiroku_gpu::nvenc::Probe::Unavailable(why) => {
            tracing::info!(reason = %why, "NVENC unavailable: mixed-stream video is encoded with OpenH264");
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiroku_gpu::{Layer, Rect};

    #[test]
    fn the_shared_compositor_paints_like_the_local_one() {
        let handle =
            CompositorService::spawn(Box::new(CpuCompositor::new()), ServiceConfig::default())
                .expect("service");
        let mut shared = SharedCompositor { handle };
        let red = Yuv {
            y: 81,
            u: 90,
            v: 240,
        };
        let scene = Scene {
            width: 64,
            height: 32,
            layers: vec![
                Layer::Fill {
                    dst: Rect::new(0, 0, 64, 32),
                    color: Yuv::BLACK,
                },
                Layer::Fill {
                    dst: Rect::new(32, 0, 32, 32),
                    color: red,
                },
            ],
        };
        let mut out = vec![Picture::filled(64, 32, Yuv::BLACK)];
        shared
            .compose(std::slice::from_ref(&scene), &mut out)
            .expect("compose");
        let mut local = vec![Picture::filled(64, 32, Yuv::BLACK)];
        CpuCompositor::new()
            .compose(&[scene], &mut local)
            .expect("compose");
        assert_eq!(out, local);
        assert_eq!(out[0].y[40], 81);
    }
}
