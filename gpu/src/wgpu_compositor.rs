//! The wgpu compositor: one compute dispatch paints a whole batch of scenes.
//!
//! Per `compose` call the host packs every source plane the batch refers to
//! (each picture once, however many layers or scenes show it) into one
//! upload buffer, writes a table of layers (one record per layer and plane)
//! and a table of scene planes, dispatches `shaders/composite.wgsl` once over
//! every plane of every scene, copies the output buffer into a readback
//! buffer and copies the planes into the output pictures. The shader uses
//! the integer arithmetic of [`crate::spec`], so results equal the CPU
//! compositor's bit for bit.
//!
//! All GPU buffers live in the compositor and are reused: they grow (to the
//! next power of two) when a batch needs more and never shrink. A batch
//! larger than the device's storage-buffer limit is split into several
//! dispatches; a single scene that alone exceeds it is refused.
//!
//! A canvas's old pixels are uploaded only when its scene has no opaque
//! layer covering the whole canvas (normally the first layer is a
//! full-canvas fill, and nothing is uploaded).
//!
//! [`GpuContext`] (device, queue, pipeline) is built once and shared by
//! every compositor through an `Arc`.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU64;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Wake, Waker};

use crate::spec::{plane_crop, plane_rect, Plane};
use crate::{validate_batch, ComposeError, Compositor, Layer, Picture, Rect, Scene};

const SHADER: &str = include_str!("../../shaders/composite.wgsl");
/// Pixels (one u32 word each 4) per workgroup along x, as in the shader.
const WORKGROUP_WORDS: u32 = 64;
/// Rows per bin. A bin is the part of a plane one row of workgroups covers
/// along x (`WORKGROUP_WORDS` words) over this many rows; each bin lists the
/// layers that touch it, so an invocation only visits those.
const BIN_ROWS: u32 = 16;
const BIN_PIXELS: u32 = WORKGROUP_WORDS * 4;
/// u32 words per record, matching the shader's structs.
const LAYER_WORDS: usize = 14;
const PLANE_WORDS: usize = 8;
/// `PlaneLayer.alpha` of a source without alpha.
const NO_ALPHA: u32 = u32::MAX;
/// `PlaneLayer.mode` flag of a fill.
const FILL: u32 = 0x100;
/// Upper bound on one buffer, whatever the device allows: keeps byte
/// offsets in `u32` and memory use bounded.
const MAX_BUFFER_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuInitError {
    #[error("no usable Vulkan adapter: {0}")]
    NoAdapter(String),
    #[error("adapter {adapter}: cannot open a device: {reason}")]
    Device { adapter: String, reason: String },
    #[error("adapter {adapter}: {reason}")]
    Pipeline { adapter: String, reason: String },
}

/// A Vulkan instance restricted to what the compositor uses.
pub(crate) fn vulkan_instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

/// Every Vulkan adapter on this machine (none without a Vulkan loader).
pub fn vulkan_adapters() -> Vec<wgpu::Adapter> {
    block_on(vulkan_instance().enumerate_adapters(wgpu::Backends::VULKAN))
}

/// The device, queue and compute pipeline, built once and shared.
#[derive(Debug)]
pub struct GpuContext {
    info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipeline: wgpu::ComputePipeline,
    bind_group_layout: wgpu::BindGroupLayout,
    /// The largest buffer (and storage binding) the compositor creates.
    max_buffer: u64,
    max_workgroups: u32,
}

impl GpuContext {
    /// Opens a device on `adapter` and builds the pipeline.
    pub fn new(adapter: &wgpu::Adapter) -> Result<Arc<Self>, GpuInitError> {
        let info = adapter.get_info();
        let name = info.name.clone();
        let limits = adapter.limits();
        let (device, queue) = block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("kiroku compositor"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| GpuInitError::Device {
            adapter: name.clone(),
            reason: e.to_string(),
        })?;
        // Errors inside `compose` are caught by error scopes; anything else
        // (there should be nothing) is logged rather than panicking.
        device.on_uncaptured_error(Arc::new(|error: wgpu::Error| {
            tracing::error!(%error, "wgpu error outside an error scope");
        }));
        device.set_device_lost_callback(|reason, message| {
            tracing::error!(?reason, %message, "GPU device lost");
        });

        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("composite.wgsl"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let bind_group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("composite bindings"),
            entries: &[
                storage(0, true),
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, false),
            ],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("composite layout"),
            bind_group_layouts: &[Some(&bind_group_layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("composite"),
            layout: Some(&layout),
            module: &module,
            entry_point: Some("composite"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(error) = block_on(scope.pop()) {
            return Err(GpuInitError::Pipeline {
                adapter: name,
                reason: error.to_string(),
            });
        }
        let max_buffer = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(MAX_BUFFER_BYTES)
            & !3;
        Ok(Arc::new(Self {
            info,
            device,
            queue,
            pipeline,
            bind_group_layout,
            max_buffer,
            max_workgroups: limits.max_compute_workgroups_per_dimension,
        }))
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Whether the adapter is a CPU implementation (lavapipe, SwiftShader).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }
}

/// Composes on a GPU through [`GpuContext`]. See the module doc.
#[derive(Debug)]
pub struct WgpuCompositor {
    context: Arc<GpuContext>,
    /// Largest buffer this compositor creates (the context's limit, lower
    /// in tests to force split batches).
    max_buffer: u64,
    dispatches: u64,
    buffers: Buffers,
    bind_group: Option<wgpu::BindGroup>,
    batch: BatchPlan,
}

impl WgpuCompositor {
    pub fn new(context: Arc<GpuContext>) -> Self {
        Self {
            max_buffer: context.max_buffer,
            dispatches: 0,
            context,
            buffers: Buffers::default(),
            bind_group: None,
            batch: BatchPlan::default(),
        }
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.context
    }

    /// Compute dispatches so far: one per `compose` call unless a batch
    /// had to be split to fit the buffer limit.
    pub fn dispatch_count(&self) -> u64 {
        self.dispatches
    }

    /// Uploads, dispatches and reads back the planned batch `scenes`.
    fn run(&mut self, scenes: &[Scene], outputs: &mut [Picture]) -> Result<(), ComposeError> {
        let context = Arc::clone(&self.context);
        let (device, queue) = (&context.device, &context.queue);
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let plan = &self.batch;

        let cap = self.max_buffer;
        let grown = [
            self.buffers.sources.reserve(device, plan.source_bytes, cap),
            self.buffers
                .layers
                .reserve(device, 4 * plan.layers.len() as u64, cap),
            self.buffers
                .planes
                .reserve(device, 4 * plan.planes.len() as u64, cap),
            self.buffers
                .bins
                .reserve(device, 4 * plan.bins.len() as u64, cap),
            self.buffers.canvas.reserve(device, plan.canvas_bytes, cap),
            self.buffers
                .readback
                .reserve(device, plan.canvas_bytes, cap),
        ];
        if grown.iter().any(|&g| g) || self.bind_group.is_none() {
            self.bind_group = Some(self.buffers.bind_group(&context));
        }
        let (
            Some(bind_group),
            Some(sources),
            Some(layers),
            Some(planes),
            Some(bins),
            Some(canvas),
            Some(readback),
        ) = (
            self.bind_group.as_ref(),
            self.buffers.sources.buffer.as_ref(),
            self.buffers.layers.buffer.as_ref(),
            self.buffers.planes.buffer.as_ref(),
            self.buffers.bins.buffer.as_ref(),
            self.buffers.canvas.buffer.as_ref(),
            self.buffers.readback.buffer.as_ref(),
        )
        else {
            return Err(ComposeError::Gpu("buffers missing after reserve".into()));
        };

        if let Some(size) = NonZeroU64::new(plan.source_bytes) {
            let mut view = queue
                .write_buffer_with(sources, 0, size)
                .ok_or_else(|| ComposeError::Gpu("cannot stage the source planes".into()))?;
            for slot in &plan.sources {
                let source = plan.source_picture(scenes, slot);
                for (plane, offset) in Plane::ALL.into_iter().zip(slot.offsets) {
                    copy_into(&mut view, offset, source.plane(plane));
                }
                if let Some(alpha) = &source.alpha {
                    for (plane, offset) in alpha.iter().zip(slot.alpha_offsets) {
                        copy_into(&mut view, offset, plane);
                    }
                }
            }
        }
        queue.write_buffer(layers, 0, bytemuck::cast_slice(&plan.layers));
        queue.write_buffer(planes, 0, bytemuck::cast_slice(&plan.planes));
        queue.write_buffer(bins, 0, bytemuck::cast_slice(&plan.bins));
        for (job, output) in plan.scenes.iter().zip(outputs.iter()) {
            if !job.needs_old_canvas {
                continue;
            }
            for (plane, out) in Plane::ALL.into_iter().zip(&job.planes) {
                let Some(size) = NonZeroU64::new(out.bytes()) else {
                    continue;
                };
                let mut view = queue
                    .write_buffer_with(canvas, out.byte_offset(), size)
                    .ok_or_else(|| ComposeError::Gpu("cannot stage an old canvas".into()))?;
                let pixels = output.plane(plane);
                for (row, line) in pixels.chunks_exact(out.width as usize).enumerate() {
                    copy_into(&mut view, row as u64 * out.row_bytes(), line);
                }
            }
        }

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("composite"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("composite"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&context.pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(
                plan.max_row_words.div_ceil(WORKGROUP_WORDS),
                plan.max_height,
                plan.scenes.len() as u32 * 3,
            );
        }
        encoder.copy_buffer_to_buffer(canvas, 0, readback, 0, plan.canvas_bytes);
        queue.submit([encoder.finish()]);
        self.dispatches += 1;

        let (done_tx, done_rx) = mpsc::channel();
        readback
            .slice(..plan.canvas_bytes)
            .map_async(wgpu::MapMode::Read, move |result| {
                // The receiver waits below; if it is gone there is no one to tell.
                let _ = done_tx.send(result);
            });
        let polled = device.poll(wgpu::PollType::wait_indefinitely());
        if let Some(error) = block_on(scope.pop()) {
            return Err(ComposeError::Gpu(error.to_string()));
        }
        polled.map_err(|e| ComposeError::Gpu(format!("waiting for the GPU: {e}")))?;
        done_rx
            .recv()
            .map_err(|_| ComposeError::Gpu("readback callback dropped".into()))?
            .map_err(|e| ComposeError::Gpu(format!("mapping the readback buffer: {e}")))?;
        let copied = readback
            .slice(..plan.canvas_bytes)
            .get_mapped_range()
            .map(|mapped| plan.copy_out(&mapped, outputs))
            .map_err(|e| ComposeError::Gpu(format!("reading the readback buffer: {e}")));
        readback.unmap();
        copied
    }
}

impl Compositor for WgpuCompositor {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn compose(&mut self, scenes: &[Scene], outputs: &mut [Picture]) -> Result<(), ComposeError> {
        validate_batch(scenes, outputs)?;
        for (scene, output) in scenes.iter().zip(outputs.iter_mut()) {
            output.prepare_canvas(scene.width, scene.height);
        }
        let limits = BatchLimits {
            max_buffer: self.max_buffer,
            max_scenes: (self.context.max_workgroups / 3) as usize,
        };
        let mut start = 0;
        while start < scenes.len() {
            let end = self.batch.plan(scenes, start, limits)?;
            if let Err(e) = self.run(&scenes[start..end], &mut outputs[start..end]) {
                // Whatever state the buffers were left in (mapped, half
                // written), the next call starts from fresh ones.
                self.buffers = Buffers::default();
                self.bind_group = None;
                return Err(e);
            }
            start = end;
        }
        Ok(())
    }
}

fn copy_into(view: &mut wgpu::QueueWriteBufferView, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    view.slice(start..start + bytes.len())
        .copy_from_slice(bytes);
}

/// A GPU buffer that only grows.
#[derive(Debug)]
struct GrowingBuffer {
    label: &'static str,
    usage: wgpu::BufferUsages,
    buffer: Option<wgpu::Buffer>,
}

impl GrowingBuffer {
    fn new(label: &'static str, usage: wgpu::BufferUsages) -> Self {
        Self {
            label,
            usage,
            buffer: None,
        }
    }

    /// Makes the buffer at least `size` bytes (`size ≤ cap`, both multiples
    /// of 4), growing to the next power of two up to `cap`; true when it
    /// was replaced.
    fn reserve(&mut self, device: &wgpu::Device, size: u64, cap: u64) -> bool {
        if self.buffer.as_ref().is_some_and(|b| b.size() >= size) {
            return false;
        }
        // Bindings and copies need a non-zero multiple of 4 bytes.
        let size = size.max(256).next_power_of_two().min(cap).max(size);
        self.buffer = Some(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(self.label),
            size,
            usage: self.usage,
            mapped_at_creation: false,
        }));
        true
    }
}

#[derive(Debug)]
struct Buffers {
    sources: GrowingBuffer,
    layers: GrowingBuffer,
    planes: GrowingBuffer,
    bins: GrowingBuffer,
    canvas: GrowingBuffer,
    readback: GrowingBuffer,
}

impl Default for Buffers {
    fn default() -> Self {
        use wgpu::BufferUsages as U;
        Self {
            sources: GrowingBuffer::new("sources", U::STORAGE | U::COPY_DST),
            layers: GrowingBuffer::new("layers", U::STORAGE | U::COPY_DST),
            planes: GrowingBuffer::new("planes", U::STORAGE | U::COPY_DST),
            bins: GrowingBuffer::new("bins", U::STORAGE | U::COPY_DST),
            canvas: GrowingBuffer::new("canvas", U::STORAGE | U::COPY_DST | U::COPY_SRC),
            readback: GrowingBuffer::new("readback", U::MAP_READ | U::COPY_DST),
        }
    }
}

impl Buffers {
    fn bind_group(&self, context: &GpuContext) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = [
            &self.sources,
            &self.layers,
            &self.planes,
            &self.bins,
            &self.canvas,
        ]
        .into_iter()
        .zip(0..)
        .filter_map(|(b, binding)| {
            b.buffer.as_ref().map(|buffer| wgpu::BindGroupEntry {
                binding,
                resource: buffer.as_entire_binding(),
            })
        })
        .collect();
        context
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("composite"),
                layout: &context.bind_group_layout,
                entries: &entries,
            })
    }
}

#[derive(Debug, Clone, Copy)]
struct BatchLimits {
    max_buffer: u64,
    max_scenes: usize,
}

/// Where one source picture's planes sit in the upload buffer; the picture
/// itself is found again through the first layer that showed it.
#[derive(Debug, Clone, Copy)]
struct SourceSlot {
    scene: usize,
    layer: usize,
    /// Byte offsets of Y, U, V.
    offsets: [u64; 3],
    /// Byte offsets of the luma- and chroma-resolution alpha planes.
    alpha_offsets: [u64; 2],
}

/// One plane of one output canvas in the canvas buffer.
#[derive(Debug, Clone, Copy, Default)]
struct OutputPlane {
    width: u32,
    height: u32,
    word_offset: u64,
    row_words: u32,
}

impl OutputPlane {
    fn byte_offset(&self) -> u64 {
        self.word_offset * 4
    }
    fn row_bytes(&self) -> u64 {
        u64::from(self.row_words) * 4
    }
    fn bytes(&self) -> u64 {
        self.row_bytes() * u64::from(self.height)
    }
}

#[derive(Debug, Clone, Copy)]
struct SceneJob {
    planes: [OutputPlane; 3],
    needs_old_canvas: bool,
}

/// The host side of one dispatch: tables and buffer layout, reused.
#[derive(Debug, Default)]
struct BatchPlan {
    /// Source slot by picture address (`Arc::as_ptr`).
    slot_by_picture: HashMap<usize, usize>,
    sources: Vec<SourceSlot>,
    source_bytes: u64,
    layers: Vec<u32>,
    planes: Vec<u32>,
    /// Bin headers and layer lists, see [`BatchPlan::add_bins`].
    bins: Vec<u32>,
    scenes: Vec<SceneJob>,
    canvas_bytes: u64,
    max_row_words: u32,
    max_height: u32,
    // Scratch for add_bins.
    plane_layers: Vec<LayerRef>,
    bin_first: Vec<usize>,
    bin_next: Vec<u32>,
}

/// A layer record of the scene plane being planned.
#[derive(Debug, Clone, Copy)]
struct LayerRef {
    record: u32,
    dst: Rect,
    opaque: bool,
}

impl BatchPlan {
    /// Plans scenes from `start` on, as many as fit in one dispatch; returns
    /// the end of the planned range. Scene indices in the plan are relative
    /// to `start`.
    fn plan(
        &mut self,
        scenes: &[Scene],
        start: usize,
        limits: BatchLimits,
    ) -> Result<usize, ComposeError> {
        self.slot_by_picture.clear();
        self.sources.clear();
        self.layers.clear();
        self.planes.clear();
        self.bins.clear();
        self.scenes.clear();
        self.source_bytes = 0;
        self.canvas_bytes = 0;
        self.max_row_words = 0;
        self.max_height = 0;
        for (index, scene) in scenes.iter().enumerate().skip(start) {
            if self.scenes.len() == limits.max_scenes {
                return Ok(index);
            }
            let mark = self.mark();
            self.add_scene(scene, index - start);
            let fits = self.source_bytes <= limits.max_buffer
                && self.canvas_bytes <= limits.max_buffer
                && 4 * self.layers.len() as u64 <= limits.max_buffer
                && 4 * self.planes.len() as u64 <= limits.max_buffer
                && 4 * self.bins.len() as u64 <= limits.max_buffer;
            if !fits {
                if self.scenes.len() == 1 {
                    return Err(ComposeError::Gpu(format!(
                        "scene {index} needs more than the {} bytes a GPU buffer may hold here",
                        limits.max_buffer
                    )));
                }
                self.rollback(mark);
                return Ok(index);
            }
        }
        Ok(scenes.len())
    }

    /// Copies the planned canvases out of the mapped canvas buffer into
    /// the output pictures, dropping the row padding.
    fn copy_out(&self, canvas: &[u8], outputs: &mut [Picture]) {
        for (job, output) in self.scenes.iter().zip(outputs.iter_mut()) {
            for (plane, out) in Plane::ALL.into_iter().zip(&job.planes) {
                let width = out.width as usize;
                let start = out.byte_offset() as usize;
                let region = &canvas[start..start + out.bytes() as usize];
                let pixels = output.plane_mut(plane);
                let row_bytes = out.row_bytes() as usize;
                if row_bytes == width {
                    pixels.copy_from_slice(region);
                    continue;
                }
                // Widths are at least 1: scenes are validated.
                for (line, padded) in pixels
                    .chunks_exact_mut(width)
                    .zip(region.chunks_exact(row_bytes))
                {
                    line.copy_from_slice(&padded[..width]);
                }
            }
        }
    }

    fn source_picture<'s>(&self, scenes: &'s [Scene], slot: &SourceSlot) -> &'s Picture {
        match &scenes[slot.scene].layers[slot.layer] {
            Layer::Picture { source, .. } => source,
            Layer::Fill { .. } => unreachable!("source slots are made from picture layers"),
        }
    }

    fn mark(&self) -> Mark {
        Mark {
            sources: self.sources.len(),
            source_bytes: self.source_bytes,
            layers: self.layers.len(),
            planes: self.planes.len(),
            bins: self.bins.len(),
            scenes: self.scenes.len(),
            canvas_bytes: self.canvas_bytes,
            max_row_words: self.max_row_words,
            max_height: self.max_height,
        }
    }

    fn rollback(&mut self, mark: Mark) {
        self.slot_by_picture.retain(|_, slot| *slot < mark.sources);
        self.sources.truncate(mark.sources);
        self.source_bytes = mark.source_bytes;
        self.layers.truncate(mark.layers);
        self.planes.truncate(mark.planes);
        self.bins.truncate(mark.bins);
        self.scenes.truncate(mark.scenes);
        self.canvas_bytes = mark.canvas_bytes;
        self.max_row_words = mark.max_row_words;
        self.max_height = mark.max_height;
    }

    fn add_scene(&mut self, scene: &Scene, scene_index: usize) {
        let full = Rect::new(0, 0, scene.width, scene.height);
        let needs_old_canvas = !scene
            .layers
            .iter()
            .any(|l| l.is_opaque() && l.dst() == full);
        let mut job = SceneJob {
            planes: [OutputPlane::default(); 3],
            needs_old_canvas,
        };
        for (plane, out) in Plane::ALL.into_iter().zip(job.planes.iter_mut()) {
            let (width, height) = plane.size(scene.width, scene.height);
            *out = OutputPlane {
                width,
                height,
                word_offset: self.canvas_bytes / 4,
                row_words: width.div_ceil(4),
            };
            self.canvas_bytes += out.bytes();
            self.max_row_words = self.max_row_words.max(out.row_words);
            self.max_height = self.max_height.max(height);

            self.plane_layers.clear();
            for (layer_index, layer) in scene.layers.iter().enumerate() {
                if layer.is_empty() {
                    continue;
                }
                self.plane_layers.push(LayerRef {
                    record: (self.layers.len() / LAYER_WORDS) as u32,
                    dst: plane_rect(layer.dst(), plane),
                    opaque: layer.is_opaque(),
                });
                self.add_layer(layer, plane, scene_index, layer_index);
            }
            let (bins, bin_columns) = self.add_bins(width, height, out.row_words);
            self.planes.extend_from_slice(&[
                width,
                height,
                out.word_offset as u32,
                out.row_words,
                bins,
                bin_columns,
                0,
                0,
            ]);
        }
        debug_assert_eq!(self.planes.len() % PLANE_WORDS, 0);
        self.scenes.push(job);
    }

    /// Builds the bins of one scene plane from `plane_layers`: for each bin,
    /// the records of the layers that touch it, back to front, leaving out
    /// those hidden under a later opaque layer that covers the whole bin.
    /// Returns the word index of the plane's bin headers (first list word,
    /// list length) and the number of bin columns.
    fn add_bins(&mut self, width: u32, height: u32, row_words: u32) -> (u32, u32) {
        let columns = row_words.div_ceil(WORKGROUP_WORDS);
        let rows = height.div_ceil(BIN_ROWS);
        let count = (columns * rows) as usize;
        let bins_of = |d: Rect| {
            let cols = d.x / BIN_PIXELS..=(d.x + d.w - 1) / BIN_PIXELS;
            (d.y / BIN_ROWS..=(d.y + d.h - 1) / BIN_ROWS).flat_map(move |r| {
                cols.clone()
                    .map(move |c| (c, r, (r * columns + c) as usize))
            })
        };
        // The first visible layer of each bin.
        self.bin_first.clear();
        self.bin_first.resize(count, 0);
        for (i, layer) in self
            .plane_layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.opaque)
        {
            let d = layer.dst;
            for (c, r, bin) in bins_of(d) {
                let (x0, y0) = (c * BIN_PIXELS, r * BIN_ROWS);
                let (x1, y1) = ((x0 + BIN_PIXELS).min(width), (y0 + BIN_ROWS).min(height));
                if d.x <= x0 && d.x + d.w >= x1 && d.y <= y0 && d.y + d.h >= y1 {
                    self.bin_first[bin] = i;
                }
            }
        }
        self.bin_next.clear();
        self.bin_next.resize(count, 0);
        for (i, layer) in self.plane_layers.iter().enumerate() {
            for (_, _, bin) in bins_of(layer.dst) {
                if i >= self.bin_first[bin] {
                    self.bin_next[bin] += 1;
                }
            }
        }
        let headers = self.bins.len();
        let mut next = (headers + 2 * count) as u32;
        for (bin, slot) in self.bin_next.iter_mut().enumerate() {
            let len = *slot;
            self.bins.extend_from_slice(&[next, len]);
            debug_assert_eq!(self.bins.len(), headers + 2 * bin + 2);
            *slot = next;
            next += len;
        }
        self.bins.resize(next as usize, 0);
        for (i, layer) in self.plane_layers.iter().enumerate() {
            for (_, _, bin) in bins_of(layer.dst) {
                if i >= self.bin_first[bin] {
                    self.bins[self.bin_next[bin] as usize] = layer.record;
                    self.bin_next[bin] += 1;
                }
            }
        }
        (headers as u32, columns)
    }

    fn add_layer(&mut self, layer: &Layer, plane: Plane, scene_index: usize, layer_index: usize) {
        let record: [u32; LAYER_WORDS] = match layer {
            Layer::Fill { dst, color } => {
                let d = plane_rect(*dst, plane);
                [
                    d.x,
                    d.y,
                    d.w,
                    d.h,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    NO_ALPHA,
                    FILL | u32::from(color.component(plane)),
                    0,
                    0,
                ]
            }
            Layer::Picture {
                source,
                crop,
                dst,
                opacity,
            } => {
                let slot = self.source_slot(source, scene_index, layer_index);
                let d = plane_rect(*dst, plane);
                let c = plane_crop(*crop, source.width, source.height, plane);
                let (stride, _) = plane.size(source.width, source.height);
                let plane_offset = match plane {
                    Plane::Y => slot.offsets[0],
                    Plane::U => slot.offsets[1],
                    Plane::V => slot.offsets[2],
                };
                let alpha = if source.alpha.is_some() {
                    slot.alpha_offsets[plane.alpha_index()] as u32
                } else {
                    NO_ALPHA
                };
                [
                    d.x,
                    d.y,
                    d.w,
                    d.h,
                    c.x,
                    c.y,
                    c.w,
                    c.h,
                    plane_offset as u32,
                    stride,
                    alpha,
                    u32::from(*opacity),
                    // Layers are non-empty, so d.w > 0.
                    c.w * 256 / d.w,
                    c.w * 256 % d.w,
                ]
            }
        };
        self.layers.extend_from_slice(&record);
    }

    /// The upload slot of `source`, allocating one the first time the batch
    /// meets this picture.
    fn source_slot(&mut self, source: &Arc<Picture>, scene: usize, layer: usize) -> SourceSlot {
        let key = Arc::as_ptr(source) as usize;
        if let Some(&index) = self.slot_by_picture.get(&key) {
            return self.sources[index];
        }
        let mut take = |len: usize| {
            let offset = self.source_bytes;
            self.source_bytes += (len as u64).next_multiple_of(4);
            offset
        };
        let offsets = [
            take(source.y.len()),
            take(source.u.len()),
            take(source.v.len()),
        ];
        let alpha_offsets = match &source.alpha {
            Some([luma, chroma]) => [take(luma.len()), take(chroma.len())],
            None => [u64::from(NO_ALPHA); 2],
        };
        let slot = SourceSlot {
            scene,
            layer,
            offsets,
            alpha_offsets,
        };
        self.slot_by_picture.insert(key, self.sources.len());
        self.sources.push(slot);
        slot
    }
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    sources: usize,
    source_bytes: u64,
    layers: usize,
    planes: usize,
    bins: usize,
    scenes: usize,
    canvas_bytes: u64,
    max_row_words: u32,
    max_height: u32,
}

/// Runs a future to completion on this thread. wgpu's native futures are
/// ready at once or after a device poll; none needs an async runtime.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{first_difference, random_picture, random_scene, source_pool, Rng};
    use crate::{select_compositor, CompositorChoice, CpuCompositor, Yuv};

    #[test]
    fn shader_is_valid_wgsl() {
        let module = naga::front::wgsl::parse_str(SHADER).expect("WGSL parses");
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .expect("WGSL validates");
        let entry = module
            .entry_points
            .iter()
            .find(|e| e.name == "composite")
            .expect("entry point");
        assert_eq!(entry.workgroup_size, [WORKGROUP_WORDS, 1, 1]);
    }

    #[test]
    fn bins_list_touching_layers_and_drop_hidden_ones() {
        let fill = |x, y, w, h| Layer::Fill {
            dst: Rect::new(x, y, w, h),
            color: Yuv::BLACK,
        };
        let scene = Scene {
            width: 512,
            height: 32,
            layers: vec![
                fill(0, 0, 512, 32),
                fill(0, 0, 256, 16),
                fill(250, 10, 10, 10),
            ],
        };
        let mut plan = BatchPlan::default();
        let limits = BatchLimits {
            max_buffer: 1 << 20,
            max_scenes: 10,
        };
        assert_eq!(
            plan.plan(std::slice::from_ref(&scene), 0, limits)
                .expect("plan"),
            1
        );
        let list = |plane: usize, bin: usize| {
            let headers = plan.planes[plane * PLANE_WORDS + 4] as usize;
            let (first, len) = (
                plan.bins[headers + 2 * bin],
                plan.bins[headers + 2 * bin + 1],
            );
            plan.bins[first as usize..(first + len) as usize].to_vec()
        };
        // Y: 512×32 in 2×2 bins of 256×16; records 0, 1, 2. The second
        // fill covers bin 0 and hides the first there.
        assert_eq!(plan.planes[5], 2, "bin columns");
        assert_eq!(list(0, 0), vec![1, 2]);
        assert_eq!(list(0, 1), vec![0, 2]);
        assert_eq!(list(0, 2), vec![0, 2]);
        assert_eq!(list(0, 3), vec![0, 2]);
        // U: 256×16, one bin, which the second fill (128×8) does not cover;
        // records 3, 4, 5.
        assert_eq!(plan.planes[PLANE_WORDS + 5], 1, "bin columns");
        assert_eq!(list(1, 0), vec![3, 4, 5]);
        assert!(!plan.scenes[0].needs_old_canvas);
    }

    /// A compositor on any Vulkan adapter (lavapipe will do), or `None` when
    /// there is none and `KIROKU_REQUIRE_GPU_TESTS=1` is not set.
    fn gpu() -> Option<WgpuCompositor> {
        match select_compositor(CompositorChoice::Gpu) {
            Ok(selection) => {
                let context = selection.gpu.expect("a GPU selection has a context");
                eprintln!("GPU test on {}", selection.reason);
                Some(WgpuCompositor::new(context))
            }
            Err(e) if std::env::var("KIROKU_REQUIRE_GPU_TESTS").as_deref() == Ok("1") => {
                panic!("KIROKU_REQUIRE_GPU_TESTS=1 but no GPU: {e}")
            }
            Err(e) => {
                eprintln!("skipping GPU test, no adapter: {e}");
                None
            }
        }
    }

    /// Composes `scenes` on both compositors from the same starting
    /// outputs and requires identical pictures.
    fn assert_same_as_cpu(
        gpu: &mut WgpuCompositor,
        scenes: &[Scene],
        start: &[Picture],
        what: &str,
    ) {
        let mut want = start.to_vec();
        CpuCompositor::new()
            .compose(scenes, &mut want)
            .expect("cpu");
        let mut got = start.to_vec();
        gpu.compose(scenes, &mut got).expect("gpu");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                first_difference(g, w),
                None,
                "{what}: scene {i} of {}",
                scenes.len()
            );
        }
    }

    fn random_batch(
        rng: &mut Rng,
        pool: &[Arc<Picture>],
        count: usize,
        max_w: u32,
        max_h: u32,
    ) -> (Vec<Scene>, Vec<Picture>) {
        (0..count)
            .map(|_| {
                let (w, h) = (1 + rng.upto(max_w - 1), 1 + rng.upto(max_h - 1));
                let scene = random_scene(rng, w, h, pool);
                // Outputs of the right size keep their pixels; others are
                // reset: both must behave alike.
                let output = if rng.chance(70) {
                    random_picture(rng, w, h, false)
                } else {
                    Picture::filled(2 + 2 * rng.upto(8), 2, Yuv::BLACK)
                };
                (scene, output)
            })
            .unzip()
    }

    #[test]
    fn random_batches_match_the_cpu_exactly() {
        let Some(mut gpu) = gpu() else { return };
        let mut rng = Rng::new(42);
        let pool = source_pool(&mut rng);
        // Small, large, small again: buffers grow and are then reused.
        for (round, (count, max_w, max_h)) in [
            (3, 64, 48),
            (6, 400, 300),
            (1, 10, 10),
            (8, 200, 120),
            (2, 33, 17),
        ]
        .into_iter()
        .enumerate()
        {
            let (scenes, outputs) = random_batch(&mut rng, &pool, count, max_w, max_h);
            assert_same_as_cpu(&mut gpu, &scenes, &outputs, &format!("round {round}"));
        }
    }

    #[test]
    fn batches_beyond_the_buffer_limit_are_split() {
        let Some(mut gpu) = gpu() else { return };
        let mut rng = Rng::new(9);
        let pool = source_pool(&mut rng);
        // Twelve 64×64 scenes (6 KiB of canvas each), each with its own
        // 64×64 source, alternately with alpha (11 KiB) and without (6 KiB).
        let (scenes, outputs): (Vec<_>, Vec<_>) = (0..12)
            .map(|i| {
                let source = Arc::new(random_picture(&mut rng, 64, 64, i % 2 == 0));
                let scene = Scene {
                    width: 64,
                    height: 64,
                    layers: vec![
                        Layer::Fill {
                            dst: Rect::new(0, 0, 64, 64),
                            color: Yuv::BLACK,
                        },
                        Layer::Picture {
                            source,
                            crop: Rect::new(2, 4, 60, 50),
                            dst: Rect::new(4, 6, 56, 58),
                            opacity: 200,
                        },
                    ],
                };
                (scene, Picture::filled(64, 64, Yuv::BLACK))
            })
            .unzip();
        assert_same_as_cpu(&mut gpu, &scenes, &outputs, "whole batch");
        assert_eq!(gpu.dispatch_count(), 1);
        // A 32 KiB source buffer holds the sources of three scenes.
        gpu.max_buffer = 32 * 1024;
        assert_same_as_cpu(&mut gpu, &scenes, &outputs, "split batch");
        assert_eq!(gpu.dispatch_count(), 1 + 4);

        let too_big = Scene {
            width: 400,
            height: 400,
            layers: vec![],
        };
        let err = gpu.compose(&[too_big], &mut [Picture::filled(2, 2, Yuv::BLACK)]);
        assert!(matches!(err, Err(ComposeError::Gpu(_))), "{err:?}");
        // The compositor is still usable afterwards.
        gpu.max_buffer = gpu.context.max_buffer;
        let (scenes, outputs) = random_batch(&mut rng, &pool, 3, 64, 64);
        assert_same_as_cpu(&mut gpu, &scenes, &outputs, "after refusal");
    }

    #[test]
    fn largest_sizes_match_the_cpu() {
        let Some(mut gpu) = gpu() else { return };
        let mut rng = Rng::new(3);
        let wide = Arc::new(random_picture(&mut rng, 4096, 3, true));
        let full = Rect::new(0, 0, 4096, 4);
        let layer = |dst: Rect, opacity: u8| Layer::Picture {
            source: Arc::clone(&wide),
            crop: full,
            dst,
            opacity,
        };
        let scenes = vec![
            Scene {
                width: 4096,
                height: 6,
                layers: vec![
                    layer(Rect::new(0, 0, 4096, 6), 255),
                    layer(Rect::new(0, 2, 2, 2), 200),
                ],
            },
            Scene {
                width: 6,
                height: 4096,
                layers: vec![
                    layer(Rect::new(0, 0, 6, 4096), 255),
                    layer(Rect::new(2, 10, 4, 4000), 90),
                ],
            },
        ];
        let outputs = vec![
            Picture::filled(4096, 6, Yuv::BLACK),
            Picture::filled(6, 4096, Yuv::BLACK),
        ];
        assert_same_as_cpu(&mut gpu, &scenes, &outputs, "4096-pixel sides");
    }

    #[test]
    fn tiled_full_hd_scene_matches_the_cpu() {
        let Some(mut gpu) = gpu() else { return };
        let mut rng = Rng::new(5);
        let tiles: Vec<_> = (0..25)
            .map(|i| Arc::new(random_picture(&mut rng, 640, 360, i % 5 == 0)))
            .collect();
        let mut layers = vec![Layer::Fill {
            dst: Rect::new(0, 0, 1920, 1080),
            color: Yuv::BLACK,
        }];
        for (i, tile) in tiles.iter().enumerate() {
            let (col, row) = (i as u32 % 5, i as u32 / 5);
            layers.push(Layer::Picture {
                source: Arc::clone(tile),
                crop: Rect::new(0, 0, 640, 360),
                dst: Rect::new(col * 384, row * 216, 384, 216),
                opacity: 255,
            });
        }
        let scene = Scene {
            width: 1920,
            height: 1080,
            layers,
        };
        assert_same_as_cpu(
            &mut gpu,
            &[scene.clone(), scene],
            &[
                Picture::filled(2, 2, Yuv::BLACK),
                Picture::filled(1920, 1080, Yuv::BLACK),
            ],
            "25 tiles",
        );
    }
}
