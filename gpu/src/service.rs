//! One compositor shared by every recording task, batching their scenes.
//!
//! [`CompositorService::spawn`] moves a [`Compositor`] onto a dedicated
//! thread and returns a cloneable [`CompositorHandle`]. A task calls
//! [`CompositorHandle::compose`] and blocks until its picture is painted.
//! The thread takes one request, then whatever else is already queued (up
//! to [`ServiceConfig::max_batch`] in all), composes them in one
//! [`Compositor::compose`] call, which for the GPU compositor is one
//! dispatch, and answers each. It never waits for more requests to arrive,
//! so batching adds no latency: requests that come in while a batch runs
//! form the next one.
//!
//! An invalid scene is answered with its own error without being batched,
//! so it cannot fail the requests that came with it; a failure of the
//! compositor itself is answered to every request of the batch. The thread
//! ends when the last handle is dropped.

use std::sync::mpsc;

use crate::{ComposeError, Compositor, Picture, Scene};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Most scenes in one compose call.
    pub max_batch: usize,
    /// Requests that may wait for the thread; further callers block.
    pub queue_capacity: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            queue_capacity: 1024,
        }
    }
}

struct Request {
    scene: Scene,
    output: Picture,
    reply: mpsc::SyncSender<Result<Picture, ComposeError>>,
}

/// Sends scenes to the service thread. Cheap to clone; one per task.
#[derive(Clone, Debug)]
pub struct CompositorHandle {
    requests: mpsc::SyncSender<Request>,
    backend: &'static str,
}

impl CompositorHandle {
    /// Paints `scene` onto `output` (resized to the canvas if needed, see
    /// [`Picture::prepare_canvas`]) and gives it back. Blocks until done.
    pub fn compose(&self, scene: Scene, output: Picture) -> Result<Picture, ComposeError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.requests
            .send(Request {
                scene,
                output,
                reply,
            })
            .map_err(|_| ComposeError::ServiceStopped)?;
        answer.recv().map_err(|_| ComposeError::ServiceStopped)?
    }

    /// The compositor's name (`cpu`, `wgpu`).
    pub fn backend(&self) -> &'static str {
        self.backend
    }
}

pub struct CompositorService;

impl CompositorService {
    /// Starts the service thread with `compositor`.
    pub fn spawn(
        compositor: Box<dyn Compositor>,
        config: ServiceConfig,
    ) -> std::io::Result<CompositorHandle> {
        Self::spawn_joinable(compositor, config).map(|(handle, _thread)| handle)
    }

    /// Like [`Self::spawn`], also returning the thread, which ends (and
    /// drops the compositor) once every handle is gone. A process should
    /// wait for it before exiting: destroying a GPU device while the driver
    /// tears itself down at exit can crash (seen with Mesa's lavapipe).
    pub fn spawn_joinable(
        compositor: Box<dyn Compositor>,
        config: ServiceConfig,
    ) -> std::io::Result<(CompositorHandle, std::thread::JoinHandle<()>)> {
        let (requests, queue) = mpsc::sync_channel(config.queue_capacity.max(1));
        let backend = compositor.name();
        let thread = std::thread::Builder::new()
            .name(format!("compositor-{backend}"))
            .spawn(move || serve(compositor, &queue, config.max_batch.max(1)))?;
        Ok((CompositorHandle { requests, backend }, thread))
    }
}

fn serve(mut compositor: Box<dyn Compositor>, queue: &mpsc::Receiver<Request>, max_batch: usize) {
    let mut scenes = Vec::with_capacity(max_batch);
    let mut outputs = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(request) = next {
            match request.scene.validate() {
                Ok(()) => {
                    scenes.push(request.scene);
                    outputs.push(request.output);
                    replies.push(request.reply);
                }
                Err(e) => {
                    let error = ComposeError::InvalidScene {
                        index: 0,
                        reason: e.to_string(),
                    };
                    // A caller that gave up waiting needs no answer.
                    let _ = request.reply.send(Err(error));
                }
            }
            next = if scenes.len() < max_batch {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if scenes.is_empty() {
            continue;
        }
        let result = compositor.compose(&scenes, &mut outputs);
        tracing::trace!(
            backend = compositor.name(),
            scenes = scenes.len(),
            "composed batch"
        );
        if let Err(e) = &result {
            tracing::warn!(backend = compositor.name(), scenes = scenes.len(), error = %e, "compose failed");
        }
        scenes.clear();
        for (output, reply) in outputs.drain(..).zip(replies.drain(..)) {
            let answer = match &result {
                Ok(()) => Ok(output),
                Err(e) => Err(e.clone()),
            };
            let _ = reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{CpuCompositor, Layer, Rect, Yuv};

    fn fill_scene(width: u32, height: u32, y: u8) -> Scene {
        Scene {
            width,
            height,
            layers: vec![Layer::Fill {
                dst: Rect::new(0, 0, width, height),
                color: Yuv { y, u: 100, v: 200 },
            }],
        }
    }

    #[test]
    fn serves_many_threads() {
        let handle =
            CompositorService::spawn(Box::new(CpuCompositor::new()), ServiceConfig::default())
                .expect("spawn");
        assert_eq!(handle.backend(), "cpu");
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let handle = handle.clone();
                std::thread::spawn(move || {
                    let mut picture = Picture::filled(2, 2, Yuv::BLACK);
                    for i in 0..50u8 {
                        let y = t.wrapping_mul(31).wrapping_add(i);
                        let width = 16 + 2 * u32::from(t);
                        picture = handle
                            .compose(fill_scene(width, 10, y), picture)
                            .expect("compose");
                        assert_eq!((picture.width, picture.height), (width, 10));
                        assert!(picture.y.iter().all(|&p| p == y));
                        assert!(picture.v.iter().all(|&p| p == 200));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
    }

    /// Records batch sizes; holds its first batch until the test opens the
    /// gate, so that the test can queue requests behind it.
    struct GatedCompositor {
        inner: CpuCompositor,
        batches: Arc<Mutex<Vec<usize>>>,
        entered: mpsc::Sender<()>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Compositor for GatedCompositor {
        fn name(&self) -> &'static str {
            "gated"
        }
        fn compose(
            &mut self,
            scenes: &[Scene],
            outputs: &mut [Picture],
        ) -> Result<(), ComposeError> {
            if let Some(gate) = self.gate.take() {
                self.entered.send(()).expect("entered");
                gate.recv().expect("gate");
            }
            self.batches.lock().expect("lock").push(scenes.len());
            self.inner.compose(scenes, outputs)
        }
    }

    type Answer = mpsc::Receiver<Result<Picture, ComposeError>>;

    /// Queues a request straight into the service's channel, without
    /// blocking, and returns where its answer will arrive.
    fn enqueue(handle: &CompositorHandle, scene: Scene) -> Answer {
        let (reply, answer) = mpsc::sync_channel(1);
        let output = Picture::filled(2, 2, Yuv::BLACK);
        handle
            .requests
            .try_send(Request {
                scene,
                output,
                reply,
            })
            .expect("queue has room");
        answer
    }

    #[test]
    fn batches_what_queued_and_isolates_invalid_scenes() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (entered, in_compose) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let compositor = GatedCompositor {
            inner: CpuCompositor::new(),
            batches: Arc::clone(&batches),
            entered,
            gate: Some(gate),
        };
        let config = ServiceConfig {
            max_batch: 4,
            queue_capacity: 16,
        };
        let handle = CompositorService::spawn(Box::new(compositor), config).expect("spawn");
        let first = enqueue(&handle, fill_scene(4, 4, 1));
        in_compose.recv().expect("service entered compose");
        let queued: Vec<_> = (0..6u8)
            .map(|i| {
                // Odd canvas width is fine, but an odd dst is not.
                let scene = if i == 2 {
                    fill_scene(3, 4, 0)
                } else {
                    fill_scene(4, 4, 10 + i)
                };
                enqueue(&handle, scene)
            })
            .collect();
        open.send(()).expect("open gate");
        assert_eq!(first.recv().expect("answer").expect("compose").y[0], 1);
        for (i, answer) in queued.into_iter().enumerate() {
            let result = answer.recv().expect("answer");
            if i == 2 {
                assert!(
                    matches!(result, Err(ComposeError::InvalidScene { .. })),
                    "{result:?}"
                );
            } else {
                assert_eq!(result.expect("compose").y[0], 10 + i as u8);
            }
        }
        // The gated first request alone; then four valid queued ones (the
        // invalid one answered on the side); then the last.
        assert_eq!(*batches.lock().expect("lock"), vec![1, 4, 1]);
    }

    struct FailingCompositor;

    impl Compositor for FailingCompositor {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn compose(&mut self, _: &[Scene], _: &mut [Picture]) -> Result<(), ComposeError> {
            Err(ComposeError::Gpu("device lost".into()))
        }
    }

    #[test]
    fn a_failed_batch_fails_each_request_and_the_service_goes_on() {
        let handle =
            CompositorService::spawn(Box::new(FailingCompositor), ServiceConfig::default())
                .expect("spawn");
        for _ in 0..3 {
            let result = handle.compose(fill_scene(2, 2, 0), Picture::filled(2, 2, Yuv::BLACK));
            assert!(
                matches!(result, Err(ComposeError::Gpu(ref m)) if m == "device lost"),
                "{result:?}"
            );
        }
    }
}
