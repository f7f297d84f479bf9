//! The HTTP edge of the VOD store: `GET`/`HEAD /vod/<FileId>.mp4` with
//! range requests, the body streamed from disk (never read whole into
//! memory).

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::vod::{parse_range, RangeAnswer, VodStore};

pub fn router(store: Arc<VodStore>) -> Router {
    Router::new()
        .route("/vod/{file}", get(serve))
        .with_state(store)
}

fn status(code: StatusCode, text: &'static str) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

/// A file this box does not hold: in a fleet, 307 to the box that does
/// (its record in the fleet's database); else 404.
async fn elsewhere(store: &Arc<VodStore>, file_id: &str) -> Response {
    let lookup = {
        let (store, id) = (store.clone(), file_id.to_owned());
        tokio::task::spawn_blocking(move || store.locate_elsewhere(&id)).await
    };
    match lookup {
        Ok(Ok(Some(found))) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, found.url)],
        )
            .into_response(),
        Ok(Ok(None)) => status(StatusCode::NOT_FOUND, "no such file\n"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, file_id, "the fleet's VOD records cannot be read");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    (header::RETRY_AFTER, "5"),
                    (header::CONTENT_TYPE, "text/plain"),
                ],
                "the fleet's VOD records cannot be read now; try again\n",
            )
                .into_response()
        }
        Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR, "VOD store error\n"),
    }
}

async fn serve(
    State(store): State<Arc<VodStore>>,
    Path(file): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let Some(file_id) = file.strip_suffix(".mp4") else {
        return status(StatusCode::NOT_FOUND, "no such file\n");
    };
    let lookup = {
        let (store, id) = (store.clone(), file_id.to_owned());
        tokio::task::spawn_blocking(move || store.get(&id)).await
    };
    let entry = match lookup {
        Ok(Ok(Some(e))) => e,
        Ok(Ok(None)) => return elsewhere(&store, file_id).await,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "VOD lookup failed");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "VOD store error\n");
        }
        Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "VOD store error\n"),
    };
    serve_file(
        &store.mp4_path(&entry.file_id),
        "video/mp4",
        &method,
        &headers,
    )
    .await
}

/// A file from disk with range requests (RFC 9110 §14, one range), the
/// body streamed (never read whole): for the VOD store and the console's
/// local recordings.
pub async fn serve_file(
    path: &std::path::Path,
    content_type: &'static str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        // Gone between the lookup and the open (a VOD file expired).
        Err(_) => return status(StatusCode::NOT_FOUND, "no such file\n"),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => return status(StatusCode::INTERNAL_SERVER_ERROR, "VOD store error\n"),
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (code, start, count, content_range) = match parse_range(range, len) {
        RangeAnswer::Full => (StatusCode::OK, 0, len, None),
        RangeAnswer::Partial { start, end } => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{len}")),
        ),
        RangeAnswer::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response()
        }
    };
    if start > 0 && file.seek(SeekFrom::Start(start)).await.is_err() {
        return status(StatusCode::INTERNAL_SERVER_ERROR, "VOD store error\n");
    }
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)))
    };
    let mut response = Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, count);
    if let Some(cr) = content_range {
        response = response.header(header::CONTENT_RANGE, cr);
    }
    response
        .body(body)
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "response error\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::vod::VodEntry;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(app: &Router, uri: &str, range: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::get(uri);
        if let Some(r) = range {
            req = req.header(header::RANGE, r);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes().to_vec();
        (parts.status, parts.headers, bytes)
    }

    #[tokio::test]
    async fn ranges_are_served_from_disk() {
        let dir = std::env::temp_dir().join(format!("kiroku-vodhttp-{}", rand::random::<u64>()));
        let store = Arc::new(VodStore::open(&dir).expect("open"));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let e = store
            .commit(
                &data,
                VodEntry {
                    file_id: String::new(),
                    task_id: "t".into(),
                    user_id: String::new(),
                    track_type: "audio_video".into(),
                    media_id: "main".into(),
                    cache_file: "x.mp4".into(),
                    size: 0,
                    created_unix_s: 0,
                    expire_at_unix_s: 0,
                },
            )
            .expect("commit");
        let app = router(store);
        let uri = format!("/vod/{}.mp4", e.file_id);

        let (code, headers, body) = get(&app, &uri, None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, data);
        assert_eq!(headers[header::ACCEPT_RANGES], "bytes");

        let (code, headers, body) = get(&app, &uri, Some("bytes=1000-1999")).await;
        assert_eq!(code, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, data[1000..2000]);
        assert_eq!(headers[header::CONTENT_RANGE], "bytes 1000-1999/100000");

        let (code, _, body) = get(&app, &uri, Some("bytes=-10")).await;
        assert_eq!(code, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, data[99_990..]);

        let (code, headers, _) = get(&app, &uri, Some("bytes=100000-")).await;
        assert_eq!(code, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(headers[header::CONTENT_RANGE], "bytes */100000");

        for missing in [
            "/vod/0000000000000000000.mp4",
            "/vod/..%2Fstate.redb",
            "/vod/abc",
        ] {
            assert_eq!(
                get(&app, missing, None).await.0,
                StatusCode::NOT_FOUND,
                "{missing}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
