//! Choosing the compositor for this machine.
//!
//! - [`CompositorChoice::Auto`] takes a real GPU (a Vulkan adapter of type
//!   discrete, integrated or virtual, in that order of preference) and
//!   otherwise the CPU compositor. Software Vulkan (llvmpipe/lavapipe,
//!   SwiftShader) is never chosen: it is slower than the CPU compositor.
//! - [`CompositorChoice::Gpu`] takes any Vulkan adapter, software ones
//!   last; it fails when there is none (tests use it to run the shader on
//!   lavapipe).
//! - [`CompositorChoice::Cpu`] takes the CPU compositor.
//!
//! Without a Vulkan loader or driver there are simply no adapters; nothing
//! here panics.

use std::str::FromStr;
use std::sync::Arc;

use crate::wgpu_compositor::vulkan_adapters;
use crate::{Compositor, CpuCompositor, GpuContext, GpuInitError, WgpuCompositor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompositorChoice {
    #[default]
    Auto,
    Cpu,
    Gpu,
}

impl FromStr for CompositorChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            other => Err(format!(
                "compositor must be auto, cpu or gpu, not {other:?}"
            )),
        }
    }
}

/// The compositor picked, why (for the logs), and the GPU context when the
/// compositor runs on one (to share with more compositors).
pub struct Selection {
    pub compositor: Box<dyn Compositor>,
    pub reason: String,
    pub gpu: Option<Arc<GpuContext>>,
}

impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selection")
            .field("compositor", &self.compositor.name())
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// Picks the compositor for `choice`; only [`CompositorChoice::Gpu`] can
/// fail.
pub fn select_compositor(choice: CompositorChoice) -> Result<Selection, GpuInitError> {
    let cpu = |reason: String| Selection {
        compositor: Box::new(CpuCompositor::new()),
        reason,
        gpu: None,
    };
    let gpu = |context: Arc<GpuContext>, reason: &str| {
        let info = context.adapter_info();
        let reason = format!(
            "{reason}: {} ({:?}, {})",
            info.name, info.device_type, info.driver
        );
        Selection {
            compositor: Box::new(WgpuCompositor::new(Arc::clone(&context))),
            reason,
            gpu: Some(context),
        }
    };
    match choice {
        CompositorChoice::Cpu => Ok(cpu("CPU compositor by configuration".into())),
        CompositorChoice::Auto => match open_gpu(false) {
            Ok(context) => Ok(gpu(context, "GPU found")),
            Err(e) => Ok(cpu(format!("CPU compositor: {e}"))),
        },
        CompositorChoice::Gpu => Ok(gpu(open_gpu(true)?, "GPU compositor by configuration")),
    }
}

/// Opens the most preferred Vulkan adapter that works: hardware ones first,
/// and software ones only when `allow_software`.
pub fn open_gpu(allow_software: bool) -> Result<Arc<GpuContext>, GpuInitError> {
    let mut adapters: Vec<_> = vulkan_adapters()
        .into_iter()
        .map(|a| (preference(a.get_info().device_type), a))
        .collect();
    if adapters.is_empty() {
        return Err(GpuInitError::NoAdapter("Vulkan reports no adapter".into()));
    }
    adapters.sort_by_key(|(rank, _)| *rank);
    let mut seen = Vec::new();
    for (rank, adapter) in &adapters {
        let info = adapter.get_info();
        if *rank >= SOFTWARE && !allow_software {
            seen.push(format!(
                "{} ({:?}) is not a hardware GPU",
                info.name, info.device_type
            ));
            continue;
        }
        match GpuContext::new(adapter) {
            Ok(context) => return Ok(context),
            Err(e) => {
                tracing::warn!(adapter = %info.name, error = %e, "GPU adapter unusable");
                seen.push(e.to_string());
            }
        }
    }
    Err(GpuInitError::NoAdapter(seen.join("; ")))
}

/// Ranks at or above this are not real GPUs.
const SOFTWARE: u8 = 3;

fn preference(device_type: wgpu::DeviceType) -> u8 {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => SOFTWARE,
        wgpu::DeviceType::Cpu => SOFTWARE + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_choice_gives_the_cpu_compositor_and_no_gpu_context() {
        let selection = select_compositor(CompositorChoice::Cpu).expect("cpu");
        assert_eq!(selection.compositor.name(), "cpu");
        assert!(selection.gpu.is_none());
        assert_eq!(selection.reason, "CPU compositor by configuration");
    }

    #[test]
    fn auto_never_picks_a_software_adapter() {
        let selection = select_compositor(CompositorChoice::Auto).expect("auto never fails");
        match &selection.gpu {
            Some(context) => assert!(!context.is_software(), "{}", selection.reason),
            None => assert_eq!(selection.compositor.name(), "cpu"),
        }
    }

    #[test]
    fn choices_parse() {
        assert_eq!("gpu".parse(), Ok(CompositorChoice::Gpu));
        assert_eq!("auto".parse(), Ok(CompositorChoice::Auto));
        assert!("vulkan".parse::<CompositorChoice>().is_err());
    }
}
