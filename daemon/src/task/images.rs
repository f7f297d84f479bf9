//! Layout images of a mixed task (background, placeholder, sub-background
//! and watermark images), fetched in the background and handed to the
//! recorder; failures become callback 309. The HTTP fetch and the decoding
//! limits live in `mix::fetch` and `mix::overlay`; this is the task's edge.

use std::sync::Arc;

use super::manager::Manager;
use crate::domain::params::MixLayout;
use crate::mix::fetch::{fetch_image, FetchLimits, ImageClient};
use crate::mix::overlay::{decode_image, ImageLimits};
use crate::notify::event;
use crate::record::mixed::Images;
use crate::record::worker::{RecorderControl, RecorderHandle};

/// Fetches a mixed task's layout images in the background: each URL of
/// the current layout once; a failure is logged, counted and reported by callback 309,
/// and the recording goes on without that image.
pub(super) struct ImageFetcher {
    http: ImageClient,
    tried: std::collections::HashSet<String>,
}

impl ImageFetcher {
    pub(super) fn new(http: ImageClient) -> Self {
        Self {
            http,
            tried: Default::default(),
        }
    }

    pub(super) fn fetch(
        &mut self,
        mgr: &Manager,
        task_id: &str,
        layout: &MixLayout,
        recorder: &RecorderHandle,
    ) {
        // The recorder keeps only the images of its current layout: a URL
        // the layout dropped is fetched again if it comes back.
        let wanted = layout.image_urls();
        self.tried.retain(|u| wanted.contains(u));
        let urls: Vec<String> = wanted
            .into_iter()
            .filter(|u| self.tried.insert(u.clone()))
            .collect();
        if urls.is_empty() {
            return;
        }
        let (mgr, task_id, http) = (mgr.clone(), task_id.to_owned(), self.http.clone());
        let control = recorder.sender();
        tokio::spawn(async move {
            let limits = FetchLimits::default();
            for url in urls {
                let result = match fetch_image(&http, &url, &limits).await {
                    Ok(bytes) => tokio::task::spawn_blocking(move || {
                        decode_image(&bytes, &ImageLimits::default()).map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string())),
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(picture) => {
                        let mut images = Images::new();
                        images.insert(url, Arc::new(picture));
                        let _ = control.send(RecorderControl::Images(images));
                    }
                    Err(error) => {
                        tracing::warn!(task_id = %task_id, url, error, "layout image could not be downloaded; recording goes on without it");
                        mgr.inner.recorders.metrics().image_failures.inc();
                        mgr.task_event(
                            &task_id,
                            |_| {},
                            Some(event::download_image_error(&url, &error)),
                        )
                        .await;
                    }
                }
            }
        });
    }
}
