//! Which compositor mixed-stream tasks paint with, chosen once at start-up
//! (`recording.compositor`).

use kiroku_gpu::cpu::CpuCompositor;
use kiroku_gpu::Compositor;

use crate::config::CompositorPreference;

/// Hands every mixed task its compositor.
pub struct CompositorSource {
    /// What was chosen and why, for the start-up log.
    pub description: String,
}

impl CompositorSource {
    pub fn new(preference: CompositorPreference) -> Self {
        let description = match preference {
            CompositorPreference::Cpu | CompositorPreference::Auto | CompositorPreference::Gpu => {
                "cpu".to_owned()
            }
        };
        Self { description }
    }

    pub fn create(&self) -> Box<dyn Compositor> {
        Box::new(CpuCompositor::new())
    }
}
