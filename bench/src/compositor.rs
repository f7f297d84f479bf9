//! Compositor throughput: how long one tick of mixed-stream composition
//! takes on the CPU compositor and on the wgpu compositor.
//!
//! Cases (sources are 640×360 I420 pictures, each task has its own 25):
//! - a: 1 task, 4 tiles → 1280×720 (2×2 grid, tiles unscaled);
//! - b: 1 task, 25 tiles → 1920×1080 (5×5 grid, tiles scaled to 384×216);
//! - c: `--tasks` tasks like b per tick: one batched compose call on the
//!   GPU, one call per task in turn on the CPU (as the service would do on
//!   each backend).
//!
//! A tick on the GPU includes uploading every source, the dispatch and the
//! readback into the output pictures. The first tick of each case is a
//! warm-up (buffer growth, pipeline caches) and is not counted. Build with
//! `--release` for figures worth quoting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use kiroku_gpu::select::open_gpu;
use kiroku_gpu::{Compositor, CpuCompositor, Layer, Picture, Rect, Scene, WgpuCompositor, Yuv};

#[derive(Parser)]
#[command(about = "kiroku compositor benchmark (CPU and wgpu)")]
struct Args {
    /// Tasks composed per tick in case c (the default keeps a run on
    /// lavapipe to seconds; 100 is the capacity question).
    #[arg(long, default_value_t = 16)]
    tasks: usize,
    /// Measured ticks per case (after one warm-up tick).
    #[arg(long, default_value_t = 3)]
    ticks: u32,
    #[arg(long, value_enum, default_value_t = Backend::Both)]
    backend: Backend,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Cpu,
    Gpu,
    Both,
}

const SOURCE_W: u32 = 640;
const SOURCE_H: u32 = 360;

/// 25 640×360 pictures with gradients (content does not change the cost
/// of either compositor).
fn base_sources() -> Vec<Picture> {
    let (cw, ch) = kiroku_gpu::chroma_size(SOURCE_W, SOURCE_H);
    (0..25u32)
        .map(|i| {
            let plane = |w: u32, h: u32, k: u32| -> Vec<u8> {
                (0..h)
                    .flat_map(|y| (0..w).map(move |x| (x * k + y * 3 + i * 7) as u8))
                    .collect()
            };
            Picture {
                width: SOURCE_W,
                height: SOURCE_H,
                y: plane(SOURCE_W, SOURCE_H, 1),
                u: plane(cw, ch, 2),
                v: plane(cw, ch, 3),
                alpha: None,
            }
        })
        .collect()
}

/// One task's own copies of the sources: separate pictures, so that the
/// GPU compositor uploads every task's sources as it would in production.
fn task_sources(base: &[Picture]) -> Vec<Arc<Picture>> {
    base.iter().map(|p| Arc::new(p.clone())).collect()
}

/// A `columns × columns` grid of `sources` on a `width × height` canvas.
fn grid_scene(width: u32, height: u32, columns: u32, sources: &[Arc<Picture>]) -> Scene {
    let (tile_w, tile_h) = ((width / columns) & !1, (height / columns) & !1);
    let mut layers = vec![Layer::Fill {
        dst: Rect::new(0, 0, width, height),
        color: Yuv::BLACK,
    }];
    for (i, source) in sources
        .iter()
        .take((columns * columns) as usize)
        .enumerate()
    {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        layers.push(Layer::Picture {
            source: Arc::clone(source),
            crop: Rect::new(0, 0, SOURCE_W, SOURCE_H),
            dst: Rect::new(col * tile_w, row * tile_h, tile_w, tile_h),
            opacity: 255,
        });
    }
    Scene {
        width,
        height,
        layers,
    }
}

struct Case {
    name: String,
    scenes: Vec<Scene>,
}

fn cases(tasks: usize) -> Vec<Case> {
    let base = base_sources();
    let first = task_sources(&base);
    vec![
        Case {
            name: "a: 1 task, 4 tiles -> 1280x720".into(),
            scenes: vec![grid_scene(1280, 720, 2, &first)],
        },
        Case {
            name: "b: 1 task, 25 tiles -> 1920x1080".into(),
            scenes: vec![grid_scene(1920, 1080, 5, &first)],
        },
        Case {
            name: format!("c: {tasks} tasks x 25 tiles -> 1920x1080"),
            scenes: (0..tasks)
                .map(|_| grid_scene(1920, 1080, 5, &task_sources(&base)))
                .collect(),
        },
    ]
}

/// Runs `ticks` measured ticks (after one warm-up); returns the mean time
/// per tick.
fn measure(
    compositor: &mut dyn Compositor,
    scenes: &[Scene],
    batched: bool,
    ticks: u32,
) -> anyhow::Result<Duration> {
    let mut outputs: Vec<Picture> = scenes
        .iter()
        .map(|s| Picture::filled(s.width, s.height, Yuv::BLACK))
        .collect();
    let mut tick = |outputs: &mut [Picture]| -> anyhow::Result<()> {
        if batched {
            compositor.compose(scenes, outputs)?;
        } else {
            for (scene, output) in scenes.iter().zip(outputs.iter_mut()) {
                compositor.compose(std::slice::from_ref(scene), std::slice::from_mut(output))?;
            }
        }
        Ok(())
    };
    tick(&mut outputs)?;
    let start = Instant::now();
    for _ in 0..ticks {
        tick(&mut outputs)?;
    }
    Ok(start.elapsed() / ticks.max(1))
}

fn report(backend: &str, case: &Case, per_tick: Duration) {
    let ms = per_tick.as_secs_f64() * 1e3;
    let scenes_per_s = case.scenes.len() as f64 / per_tick.as_secs_f64();
    println!(
        "{backend:<5} {:<40} {ms:>10.2} {scenes_per_s:>12.1}",
        case.name
    );
}

fn run(args: &Args) -> anyhow::Result<()> {
    let cases = cases(args.tasks);
    let gpu = if args.backend == Backend::Cpu {
        None
    } else {
        match open_gpu(true) {
            Ok(context) => {
                let info = context.adapter_info();
                println!(
                    "adapter: {} ({:?}, {} {})",
                    info.name, info.device_type, info.driver, info.driver_info
                );
                Some(WgpuCompositor::new(context))
            }
            Err(e) if args.backend == Backend::Gpu => {
                return Err(e).context("--backend gpu needs a Vulkan adapter")
            }
            Err(e) => {
                println!("adapter: none ({e}); GPU rows skipped");
                None
            }
        }
    };
    println!(
        "{:<5} {:<40} {:>10} {:>12}",
        "", "case", "ms/tick", "scenes/s"
    );
    if args.backend != Backend::Gpu {
        let mut cpu = CpuCompositor::new();
        for case in &cases {
            report(
                "cpu",
                case,
                measure(&mut cpu, &case.scenes, false, args.ticks)?,
            );
        }
    }
    if let Some(mut gpu) = gpu {
        for case in &cases {
            report(
                "wgpu",
                case,
                measure(&mut gpu, &case.scenes, true, args.ticks)?,
            );
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compositor-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
