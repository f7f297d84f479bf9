//! S3-compatible object storage: where `StorageParams.CloudStorage` sends a
//! task's files — Tencent COS through its S3 API (`Vendor` 0), AWS S3
//! (`Vendor` 1), and anything that speaks the same protocol (MinIO, Ceph
//! RGW, on-premises COS, moto) through an endpoint override in the
//! appliance configuration ([`S3Config`]).
//!
//! - [`S3Target::from_params`] resolves a task's validated
//!   [`CloudStorage`] and the appliance's [`S3Config`] into one bucket
//!   endpoint and credentials; nothing touches the network yet.
//! - [`S3Uploader`] is the async core on top of the `object_store` crate:
//!   [`S3Uploader::put_file`] writes an object with one `PUT` up to
//!   [`S3Config::multipart_threshold_mib`] and with a multipart upload
//!   (parts of [`S3Config::part_size_mib`], a few in flight) above it;
//!   [`S3Uploader::head`], [`S3Uploader::get`] and [`S3Uploader::list`] are
//!   for tests and operations. Recorder OS threads can use
//!   [`S3Uploader::put_file_blocking`].
//! - Every failure is an [`UploadError`] carrying the storage service's own
//!   `Code` and `Message` (`NoSuchBucket`, `AccessDenied`,
//!   `InvalidAccessKeyId`, `SignatureDoesNotMatch`, ...), or a transport code
//!   (`ConnectError`, `Timeout`, ...) when no answer came back, because
//!   callback 308 (`UPLOAD_ERROR`) reports exactly those two strings; and
//!   [`UploadError::retryable`] says whether trying again later can help
//!   (transport errors, 5xx, throttling) or not (wrong bucket, keys,
//!   permissions).
//!
//! Object keys arrive complete (`<Prefix>/<TaskId>/<file>`, see
//! `hls::naming`) and are checked with [`super::check_key`] like the
//! local store's.
//!
//! Endpoints: COS defaults to `https://cos.{region}.myqcloud.com` and AWS to
//! `https://s3.{region}.amazonaws.com`, both addressed virtual-hosted style
//! (`https://<bucket>.cos.<region>.myqcloud.com/<key>`). An override may
//! use `{region}` and `{bucket}`; without `{bucket}` the bucket goes in
//! front of the host, or into the path with `path_style = true` (MinIO,
//! Ceph, moto), and always into the path for IP-address hosts and bucket
//! names with dots (which would not match a wildcard certificate).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryFutureExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};

use super::check_key;
use crate::config::S3Config;
use crate::domain::params::{CloudStorage, Vendor};

/// The S3 endpoint of Tencent COS (`Vendor` 0).
pub const DEFAULT_COS_ENDPOINT: &str = "https://cos.{region}.myqcloud.com";
/// AWS S3's regional endpoint (`Vendor` 1).
pub const DEFAULT_AWS_ENDPOINT: &str = "https://s3.{region}.amazonaws.com";

const MIB: u64 = 1024 * 1024;
/// S3's limit of 10 000 parts per upload (the part size range, 5 MiB to
/// 5 GiB, is checked with the configuration, `config::validate_s3`).
const MAX_PARTS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    #[error("region {0:?} is not a region name")]
    BadRegion(String),
    #[error("bucket {0:?} is not a bucket name")]
    BadBucket(String),
    #[error("storage credentials are empty")]
    NoCredentials,
    #[error("S3 endpoint {endpoint:?}: {why}")]
    BadEndpoint { endpoint: String, why: &'static str },
    #[error("S3 endpoint {0:?} is plain HTTP; set allow_http to permit it")]
    HttpNotAllowed(String),
    #[error("setting up the S3 client")]
    Client(#[source] object_store::Error),
}

/// One task's bucket: where requests go and how they are signed.
#[derive(Clone)]
pub struct S3Target {
    vendor: Vendor,
    region: String,
    bucket: String,
    /// What `object_store` calls the endpoint: with the bucket in it when
    /// `virtual_hosted`, without when the bucket goes into the path.
    endpoint: String,
    virtual_hosted: bool,
    access_key: String,
    secret_key: String,
    config: S3Config,
}

impl fmt::Debug for S3Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Target")
            .field("vendor", &self.vendor)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("url", &self.bucket_url())
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl S3Target {
    pub fn from_params(storage: &CloudStorage, config: &S3Config) -> Result<Self, TargetError> {
        // `api::validate` already allows only these; checked again because
        // both end up in a host name.
        let region = &storage.region;
        if region.is_empty()
            || region.len() > 64
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(TargetError::BadRegion(region.clone()));
        }
        let bucket = &storage.bucket;
        if bucket.is_empty()
            || bucket.len() > 255
            || bucket.starts_with('.')
            || bucket.ends_with('.')
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(TargetError::BadBucket(bucket.clone()));
        }
        if storage.access_key.is_empty() || storage.secret_key.is_empty() {
            return Err(TargetError::NoCredentials);
        }
        let template = match storage.vendor {
            Vendor::TencentCos => config
                .cos_endpoint
                .as_deref()
                .unwrap_or(DEFAULT_COS_ENDPOINT),
            Vendor::AwsS3 => config
                .aws_endpoint
                .as_deref()
                .unwrap_or(DEFAULT_AWS_ENDPOINT),
        };
        let (endpoint, virtual_hosted) =
            resolve_endpoint(template, region, bucket, config.path_style)?;
        if endpoint.starts_with("http://") && !config.allow_http {
            return Err(TargetError::HttpNotAllowed(endpoint));
        }
        Ok(Self {
            vendor: storage.vendor,
            region: region.clone(),
            bucket: bucket.clone(),
            endpoint,
            virtual_hosted,
            access_key: storage.access_key.clone(),
            secret_key: storage.secret_key.clone(),
            config: config.clone(),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The bucket's base URL, objects are `<this>/<key>` (for logs).
    pub fn bucket_url(&self) -> String {
        if self.virtual_hosted {
            self.endpoint.clone()
        } else {
            format!("{}/{}", self.endpoint, self.bucket)
        }
    }
}

/// `(endpoint, virtual_hosted)` for `object_store`.
fn resolve_endpoint(
    template: &str,
    region: &str,
    bucket: &str,
    path_style: bool,
) -> Result<(String, bool), TargetError> {
    let bad = |why| TargetError::BadEndpoint {
        endpoint: template.to_owned(),
        why,
    };
    let with_region = template.replace("{region}", region);
    let bucket_in_template = with_region.contains("{bucket}");
    let mut url = reqwest::Url::parse(&with_region.replace("{bucket}", bucket))
        .map_err(|_| bad("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("not an http(s) URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("has a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("has user information"));
    }
    let host = url.host_str().ok_or_else(|| bad("has no host"))?.to_owned();
    // An IP address cannot take the bucket in front: path style only.
    let is_ip = host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok();
    let virtual_hosted = if bucket_in_template {
        true
    } else if path_style || is_ip || bucket.contains('.') {
        false
    } else {
        url.set_host(Some(&format!("{bucket}.{host}")))
            .map_err(|_| bad("bucket does not make a host name"))?;
        true
    };
    Ok((
        url.as_str().trim_end_matches('/').to_owned(),
        virtual_hosted,
    ))
}

/// What went wrong, coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The storage service answered with an error.
    Service,
    /// No answer: connection refused or reset, DNS, TLS, timeout.
    Transport,
    /// The key is not one this store accepts (never sent).
    InvalidKey,
    /// Anything else (an unparseable response, ...).
    Other,
}

/// A failed storage operation, with what callback 308 reports.
#[derive(Debug, thiserror::Error)]
#[error("{op} {key:?}: {code}: {message}")]
pub struct UploadError {
    op: &'static str,
    key: String,
    kind: ErrorKind,
    status: Option<u16>,
    code: String,
    message: String,
    retryable: bool,
    #[source]
    source: Option<Box<object_store::Error>>,
}

impl UploadError {
    /// The storage service's error code (`NoSuchBucket`, `AccessDenied`,
    /// ...), or a transport code (`ConnectError`, `Timeout`,
    /// `RequestError`, `TransportError`): callback 308's `Code`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The service's message, or the transport failure: callback 308's
    /// `Message`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying the same request later may succeed.
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The HTTP status of the service's answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The task's bucket could not be set up (its parameters are unusable
    /// with this appliance's S3 configuration).
    pub fn no_target(key: &str) -> Self {
        Self {
            op: "put",
            key: key.to_owned(),
            kind: ErrorKind::Other,
            status: None,
            code: "InvalidStorageTarget".into(),
            message:
                "the task's storage parameters do not make a usable S3 target (see the daemon log)"
                    .into(),
            retryable: false,
            source: None,
        }
    }

    /// The file could not be read back from the local spool.
    pub fn local(key: &str, why: String) -> Self {
        Self {
            op: "read spooled",
            key: key.to_owned(),
            kind: ErrorKind::Other,
            status: None,
            code: "LocalReadError".into(),
            message: why,
            retryable: true,
            source: None,
        }
    }

    fn invalid_key(op: &'static str, key: &str) -> Self {
        Self {
            op,
            key: key.to_owned(),
            kind: ErrorKind::InvalidKey,
            status: None,
            code: "InvalidObjectName".into(),
            message: "object key is not a relative path of plain names".into(),
            retryable: false,
            source: None,
        }
    }

    fn classify(op: &'static str, key: &str, err: object_store::Error) -> Self {
        // The chain as text: `object_store` keeps the service's XML body in
        // its message but does not expose its retry error type.
        let mut text = String::new();
        let mut transport = None;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = cur {
            if transport.is_none() {
                if let Some(h) = e.downcast_ref::<HttpError>() {
                    transport = Some((h.kind(), chain_text(h)));
                }
            }
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&e.to_string());
            cur = e.source();
        }
        let status = parse_status(&text);
        let xml_code = xml_element(&text, "Code");
        let (kind, code, message) = match (status, xml_code, transport) {
            (_, Some(code), _) => (
                ErrorKind::Service,
                code,
                xml_element(&text, "Message").unwrap_or_else(|| err.to_string()),
            ),
            (Some(s), None, _) => (ErrorKind::Service, status_code_name(s), err.to_string()),
            (None, None, Some((k, msg))) => {
                let code = match k {
                    HttpErrorKind::Connect => "ConnectError",
                    HttpErrorKind::Timeout => "Timeout",
                    HttpErrorKind::Request | HttpErrorKind::Interrupted => "RequestError",
                    _ => "TransportError",
                };
                (ErrorKind::Transport, code.to_owned(), msg)
            }
            (None, None, None) if text.contains("redirect without LOCATION") => (
                ErrorKind::Service,
                "PermanentRedirect".to_owned(),
                "redirected without a location: is the region right?".to_owned(),
            ),
            (None, None, None) => (ErrorKind::Other, "ClientError".to_owned(), err.to_string()),
        };
        let retryable = match kind {
            ErrorKind::Transport => true,
            ErrorKind::Service => {
                RETRYABLE_CODES.contains(&code.as_str())
                    || status.is_some_and(|s| s >= 500 || s == 408 || s == 429)
            }
            ErrorKind::InvalidKey | ErrorKind::Other => false,
        };
        Self {
            op,
            key: key.to_owned(),
            kind,
            status,
            code,
            message,
            retryable,
            source: Some(Box::new(err)),
        }
    }
}

/// Service codes worth retrying whatever their status (COS and S3).
const RETRYABLE_CODES: &[&str] = &[
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "OperationAborted",
];

fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// `... status code: 404 Not Found: ...` in `object_store`'s messages.
fn parse_status(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    let digits = text.get(at..at + 3)?;
    digits.parse().ok().filter(|s| (100..600).contains(s))
}

/// The text of the first `<name>...</name>` in an S3 error document.
fn xml_element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let len = text.get(start..)?.find(&close)?;
    let raw = text.get(start..start + len)?.trim();
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// A code for answers without an error document (`HEAD`, some proxies).
fn status_code_name(status: u16) -> String {
    match status {
        301 | 307 => "PermanentRedirect",
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "AccessDenied",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        411 => "MissingContentLength",
        412 => "PreconditionFailed",
        413 => "EntityTooLarge",
        429 => "SlowDown",
        500 => "InternalError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        other => return format!("HttpStatus{other}"),
    }
    .to_owned()
}

/// What [`S3Uploader::head`] and [`S3Uploader::list`] report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub e_tag: Option<String>,
    /// Unix time in milliseconds.
    pub last_modified_ms: i64,
}

impl From<object_store::ObjectMeta> for ObjectInfo {
    fn from(m: object_store::ObjectMeta) -> Self {
        Self {
            key: m.location.to_string(),
            size: m.size,
            e_tag: m.e_tag,
            last_modified_ms: m.last_modified.timestamp_millis(),
        }
    }
}

/// Uploads to one bucket. Cheap to share (`&self` everywhere); build one
/// per task or per distinct [`S3Target`].
#[derive(Debug)]
pub struct S3Uploader {
    store: AmazonS3,
    threshold: u64,
    part_size: u64,
    concurrency: usize,
}

impl S3Uploader {
    pub fn new(target: &S3Target) -> Result<Self, TargetError> {
        let c = &target.config;
        let user_agent = concat!("kiroku/", env!("CARGO_PKG_VERSION"));
        let options = ClientOptions::new()
            .with_allow_http(c.allow_http)
            .with_connect_timeout(Duration::from_secs(c.connect_timeout_secs))
            .with_timeout(Duration::from_secs(c.request_timeout_secs))
            .with_user_agent(object_store::HeaderValue::from_static(user_agent));
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: c.max_retries,
            retry_timeout: Duration::from_secs(c.retry_timeout_secs),
        };
        let store = AmazonS3Builder::new()
            .with_region(&target.region)
            .with_bucket_name(&target.bucket)
            .with_endpoint(&target.endpoint)
            .with_virtual_hosted_style_request(target.virtual_hosted)
            .with_access_key_id(&target.access_key)
            .with_secret_access_key(&target.secret_key)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(TargetError::Client)?;
        Ok(Self {
            store,
            threshold: c.multipart_threshold_mib * MIB,
            part_size: c.part_size_mib * MIB,
            concurrency: c.part_concurrency,
        })
    }

    /// Writes (or replaces) the object `key`; readers never see a partial
    /// object. A failed multipart upload is aborted (best effort) so that
    /// no parts are left behind.
    pub async fn put_file(&self, key: &str, data: Bytes) -> Result<(), UploadError> {
        let len = data.len() as u64;
        if len <= self.threshold {
            return self.put_whole(key, data).await;
        }
        self.put_multipart(key, len, |start, end| {
            // Bounds are ≤ len, which came from a usize.
            std::future::ready(Ok(data.slice(start as usize..end as usize)))
        })
        .await
    }

    /// Uploads `len` bytes at `offset` of the file `path` as object `key`,
    /// reading a large file part by part (multipart) instead of into
    /// memory: an upload holds a few parts at a time, whatever the size.
    pub async fn put_from_file(
        &self,
        key: &str,
        path: &std::path::Path,
        offset: u64,
        len: u64,
    ) -> Result<(), UploadError> {
        let read = |start: u64, end: u64| {
            let path = path.to_owned();
            async move {
                tokio::task::spawn_blocking(move || read_range(&path, offset + start, end - start))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r)
                    .map(Bytes::from)
                    .map_err(|e| UploadError::local(key, e.to_string()))
            }
        };
        if len <= self.threshold {
            let data = read(0, len).await?;
            return self.put_whole(key, data).await;
        }
        self.put_multipart(key, len, read).await
    }

    async fn put_whole(&self, key: &str, data: Bytes) -> Result<(), UploadError> {
        let path = object_path("put", key)?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type(key).into());
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&path, PutPayload::from(data), opts)
            .await
            .map_err(|e| UploadError::classify("put", key, e))?;
        Ok(())
    }

    /// A multipart upload of `len` bytes, each part's bytes `[start, end)`
    /// from `read`; at most two parts are read ahead and `part_concurrency`
    /// are in flight.
    async fn put_multipart<F, Fut>(
        &self,
        key: &str,
        len: u64,
        mut read: F,
    ) -> Result<(), UploadError>
    where
        F: FnMut(u64, u64) -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, UploadError>>,
    {
        let path = object_path("put", key)?;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type(key).into());
        let part_size = self
            .part_size
            .max(len.div_ceil(MAX_PARTS).next_multiple_of(MIB));
        let opts = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let mut upload = self
            .store
            .put_multipart_opts(&path, opts)
            .await
            .map_err(|e| UploadError::classify("create multipart upload", key, e))?;
        let ranges = (0..len.div_ceil(part_size))
            .map(|i| (i * part_size, ((i + 1) * part_size).min(len)))
            .collect::<Vec<_>>();
        let sent = futures_util::stream::iter(ranges)
            .map(|(start, end)| read(start, end))
            .buffered(2)
            // Parts are numbered in the order `put_part` is called, so
            // they are started in order and may finish in any order.
            .map_ok(|part| {
                upload
                    .put_part(PutPayload::from(part))
                    .map_err(|e| UploadError::classify("multipart upload", key, e))
            })
            .try_buffer_unordered(self.concurrency)
            .try_for_each(|()| std::future::ready(Ok(())))
            .await;
        let done = match sent {
            Ok(()) => upload
                .complete()
                .await
                .map(drop)
                .map_err(|e| UploadError::classify("multipart upload", key, e)),
            Err(e) => Err(e),
        };
        if let Err(err) = done {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(key, error = %abort, "aborting a failed multipart upload");
            }
            return Err(err);
        }
        Ok(())
    }

    /// [`Self::put_file`] for code outside the runtime (recorder threads).
    /// Panics if called from inside an async context, like
    /// [`tokio::runtime::Handle::block_on`].
    pub fn put_file_blocking(
        &self,
        runtime: &tokio::runtime::Handle,
        key: &str,
        data: Bytes,
    ) -> Result<(), UploadError> {
        runtime.block_on(self.put_file(key, data))
    }

    /// The object's size and tag, `None` if there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, UploadError> {
        let path = object_path("head", key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(meta.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(UploadError::classify("head", key, e)),
        }
    }

    /// Deletes the object (none under `key` is no error: S3 answers 204).
    pub async fn delete(&self, key: &str) -> Result<(), UploadError> {
        let path = object_path("delete", key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(UploadError::classify("delete", key, e)),
        }
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes, UploadError> {
        let path = object_path("get", key)?;
        let fail = |e| UploadError::classify("get", key, e);
        self.store
            .get(&path)
            .await
            .map_err(fail)?
            .bytes()
            .await
            .map_err(fail)
    }

    /// Every object under `prefix` (a folder: `p1/p2/<TaskId>`; empty for
    /// the whole bucket), in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, UploadError> {
        let path = if prefix.is_empty() {
            None
        } else {
            Some(object_path("list", prefix.trim_end_matches('/'))?)
        };
        let mut out: Vec<ObjectInfo> = self
            .store
            .list(path.as_ref())
            .map_ok(ObjectInfo::from)
            .try_collect()
            .await
            .map_err(|e| UploadError::classify("list", prefix, e))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

fn read_range(path: &std::path::Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn object_path(op: &'static str, key: &str) -> Result<Path, UploadError> {
    check_key(key).map_err(|_| UploadError::invalid_key(op, key))?;
    Path::parse(key).map_err(|_| UploadError::invalid_key(op, key))
}

/// The `Content-Type` players and browsers expect from the bucket.
/// The content type players expect for an object key's extension.
pub fn content_type(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, ext)| ext) {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("mp4") => "video/mp4",
        Some("m4s") => "video/iso.segment",
        Some("aac") => "audio/aac",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(vendor: Vendor, bucket: &str) -> CloudStorage {
        CloudStorage {
            vendor,
            region: "ap-shanghai".into(),
            bucket: bucket.into(),
            access_key: "AKID".into(),
            secret_key: "secret".into(),
            file_name_prefix: vec![],
        }
    }

    #[test]
    fn default_endpoints_are_virtual_hosted() {
        let cfg = S3Config::default();
        let t = S3Target::from_params(&storage(Vendor::TencentCos, "rec-1250000000"), &cfg)
            .expect("cos");
        assert_eq!(
            t.bucket_url(),
            "https://rec-1250000000.cos.ap-shanghai.myqcloud.com"
        );
        let t = S3Target::from_params(&storage(Vendor::AwsS3, "rec"), &cfg).expect("aws");
        assert_eq!(t.bucket_url(), "https://rec.s3.ap-shanghai.amazonaws.com");
        // Dots in a bucket would break the wildcard certificate.
        let t = S3Target::from_params(&storage(Vendor::AwsS3, "a.b"), &cfg).expect("aws");
        assert_eq!(t.bucket_url(), "https://s3.ap-shanghai.amazonaws.com/a.b");
        assert!(!format!("{t:?}").contains("secret\""), "{t:?}");
    }

    #[test]
    fn overrides() {
        let mut cfg = S3Config {
            aws_endpoint: Some("http://127.0.0.1:9000/".into()),
            cos_endpoint: Some("https://cos.{region}.example.internal".into()),
            ..S3Config::default()
        };
        let aws = storage(Vendor::AwsS3, "rec");
        assert!(matches!(
            S3Target::from_params(&aws, &cfg),
            Err(TargetError::HttpNotAllowed(_))
        ));
        cfg.allow_http = true;
        // An IP address cannot take the bucket in front: path style.
        let t = S3Target::from_params(&aws, &cfg).expect("ip");
        assert_eq!(t.bucket_url(), "http://127.0.0.1:9000/rec");
        let cos = storage(Vendor::TencentCos, "rec-125");
        let t = S3Target::from_params(&cos, &cfg).expect("cos");
        assert_eq!(
            t.bucket_url(),
            "https://rec-125.cos.ap-shanghai.example.internal"
        );
        cfg.path_style = true;
        let t = S3Target::from_params(&cos, &cfg).expect("cos path");
        assert_eq!(
            t.bucket_url(),
            "https://cos.ap-shanghai.example.internal/rec-125"
        );
        cfg.cos_endpoint = Some("https://gw.example/{region}/{bucket}".into());
        let t = S3Target::from_params(&cos, &cfg).expect("template");
        assert_eq!(t.bucket_url(), "https://gw.example/ap-shanghai/rec-125");
        for bad in ["ftp://x", "not a url", "https://u:p@x", "https://x/?a=b"] {
            cfg.cos_endpoint = Some(bad.into());
            assert!(
                matches!(
                    S3Target::from_params(&cos, &cfg),
                    Err(TargetError::BadEndpoint { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejects_bad_params() {
        let cfg = S3Config::default();
        let mut s = storage(Vendor::TencentCos, "b");
        s.region = "x.evil.com/".into();
        assert!(matches!(
            S3Target::from_params(&s, &cfg),
            Err(TargetError::BadRegion(_))
        ));
        let mut s = storage(Vendor::TencentCos, "b/../c");
        assert!(S3Target::from_params(&s, &cfg).is_err());
        s.bucket = "b".into();
        s.secret_key.clear();
        assert!(matches!(
            S3Target::from_params(&s, &cfg),
            Err(TargetError::NoCredentials)
        ));
    }

    #[test]
    fn parses_service_errors() {
        let text = "Generic S3 error: Error performing PUT http://h/b/k in 2ms - Server \
            returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error>\
            <Code>SignatureDoesNotMatch</Code><Message>The request signature &amp; \
            yours differ</Message><RequestId>1</RequestId></Error>";
        assert_eq!(parse_status(text), Some(403));
        assert_eq!(
            xml_element(text, "Code").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(
            xml_element(text, "Message").as_deref(),
            Some("The request signature & yours differ")
        );
        assert_eq!(xml_element("<Code></Code>", "Code"), None);
        assert_eq!(parse_status("status code: 4"), None);
        assert_eq!(status_code_name(404), "NotFound");
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("p/t/a.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(content_type("p/t/a_20330531094551825.ts"), "video/mp2t");
        assert_eq!(content_type("p/t/x"), "application/octet-stream");
    }

    /// Against moto (`moto_server`, a real S3 protocol implementation).
    mod moto {
        use super::*;
        use std::net::{SocketAddr, TcpListener, TcpStream};
        use std::path::PathBuf;
        use std::process::{Child, Command, Stdio};
        use std::time::Instant;

        /// `$KIROKU_MOTO_SERVER`, the workspace's `.venv/bin/moto_server`, or
        /// `moto_server` on PATH; `None` skips the test, unless
        /// `KIROKU_REQUIRE_TOOLS=1`, which fails it.
        fn moto_binary() -> Option<PathBuf> {
            let from_env = std::env::var_os("KIROKU_MOTO_SERVER").map(PathBuf::from);
            let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
            let on_path = std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("moto_server"))
                    .find(|f| f.is_file())
            });
            let found = from_env
                .filter(|p| p.is_file())
                .or_else(|| venv.is_file().then_some(venv))
                .or(on_path);
            if found.is_none() {
                if std::env::var("KIROKU_REQUIRE_TOOLS").as_deref() == Ok("1") {
                    panic!(
                        "moto_server is required (KIROKU_REQUIRE_TOOLS=1): set \
                         KIROKU_MOTO_SERVER or pip install 'moto[server]' into .venv"
                    );
                }
                eprintln!(
                    "skipped: moto_server not found (KIROKU_MOTO_SERVER, .venv/bin, PATH); \
                     pip install 'moto[server]' to run the S3 tests"
                );
            }
            found
        }

        struct Moto {
            bin: PathBuf,
            port: u16,
            /// `INITIAL_NO_AUTH_ACTION_COUNT`: requests served before moto
            /// starts checking signatures against its IAM (never if unset).
            no_auth_actions: Option<u32>,
            child: Option<Child>,
        }

        impl Moto {
            fn start(bin: PathBuf) -> Self {
                Self::start_with(bin, None)
            }

            fn start_with(bin: PathBuf, no_auth_actions: Option<u32>) -> Self {
                let port = TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("free port")
                    .port();
                let mut m = Self {
                    bin,
                    port,
                    no_auth_actions,
                    child: None,
                };
                m.restart();
                m
            }

            fn restart(&mut self) {
                assert!(self.child.is_none(), "already running");
                let mut cmd = Command::new(&self.bin);
                if let Some(n) = self.no_auth_actions {
                    cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
                }
                let child = cmd
                    .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start moto_server");
                self.child = Some(child);
                let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
                let deadline = Instant::now() + Duration::from_secs(60);
                while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                    assert!(Instant::now() < deadline, "moto_server did not start");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }

            fn stop(&mut self) {
                if let Some(mut c) = self.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }

            fn endpoint(&self) -> String {
                format!("http://127.0.0.1:{}", self.port)
            }

            /// moto does not check signatures: a bare `PUT /<bucket>` makes
            /// one.
            async fn create_bucket(&self, bucket: &str) {
                let r = reqwest::Client::new()
                    .put(format!("{}/{bucket}", self.endpoint()))
                    .send()
                    .await
                    .expect("create bucket");
                assert!(r.status().is_success(), "create bucket: {}", r.status());
            }

            /// An IAM request moto serves while it does not check
            /// signatures (it routes on the credential scope's service).
            async fn iam(&self, form: &[(&str, &str)]) -> String {
                let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/iam/\
                    aws4_request, SignedHeaders=host, Signature=0";
                let body: String = form
                    .iter()
                    .chain(&[("Version", "2010-05-08")])
                    .map(|(k, v)| format!("{k}={}", form_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&");
                let r = reqwest::Client::new()
                    .post(format!("{}/", self.endpoint()))
                    .header("Authorization", auth)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .expect("iam request");
                assert!(r.status().is_success(), "iam {form:?}: {}", r.status());
                r.text().await.expect("iam body")
            }

            /// A user with `policy`'s S3 actions: `(access key, secret)`.
            async fn user(&self, name: &str, actions: &str) -> (String, String) {
                self.iam(&[("Action", "CreateUser"), ("UserName", name)])
                    .await;
                let policy = format!(
                    r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":{actions},"Resource":"*"}}]}}"#
                );
                self.iam(&[
                    ("Action", "PutUserPolicy"),
                    ("UserName", name),
                    ("PolicyName", "p"),
                    ("PolicyDocument", &policy),
                ])
                .await;
                let xml = self
                    .iam(&[("Action", "CreateAccessKey"), ("UserName", name)])
                    .await;
                (
                    xml_element(&xml, "AccessKeyId").expect("key id"),
                    xml_element(&xml, "SecretAccessKey").expect("secret"),
                )
            }

            fn uploader(&self, bucket: &str, max_retries: usize) -> S3Uploader {
                self.uploader_as(bucket, max_retries, ("AKID", "secret"))
            }

            fn uploader_as(
                &self,
                bucket: &str,
                max_retries: usize,
                (access_key, secret_key): (&str, &str),
            ) -> S3Uploader {
                let cfg = S3Config {
                    aws_endpoint: Some(self.endpoint()),
                    allow_http: true,
                    path_style: true,
                    multipart_threshold_mib: 8,
                    part_size_mib: 5,
                    connect_timeout_secs: 2,
                    request_timeout_secs: 30,
                    max_retries,
                    retry_timeout_secs: 5,
                    ..S3Config::default()
                };
                let mut s = storage(Vendor::AwsS3, bucket);
                s.region = "us-east-1".into();
                s.access_key = access_key.into();
                s.secret_key = secret_key.into();
                let target = S3Target::from_params(&s, &cfg).expect("target");
                S3Uploader::new(&target).expect("uploader")
            }
        }

        impl Drop for Moto {
            fn drop(&mut self) {
                self.stop();
            }
        }

        fn form_encode(v: &str) -> String {
            v.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        }

        fn pattern(len: usize, seed: u32) -> Bytes {
            let mut x = seed.wrapping_mul(2_654_435_761).max(1);
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect::<Vec<u8>>()
                .into()
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn uploads_reads_back_and_reports_service_errors() {
            let Some(bin) = moto_binary() else { return };
            let moto = Moto::start(bin);
            moto.create_bucket("rec").await;
            let up = moto.uploader("rec", 1);

            // Spec §3a names: prefixes, task id, base64 user/room ids
            // (`/` → `-`, `=` → `.`), digits, `_`.
            let dir = "p1/p-2/task_0123-abc";
            let small = [
                format!("{dir}/1400000000_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_video.m3u8"),
                format!(
                    "{dir}/1400000000_12345__UserId_s_MTY4NjExOQ..__UserId_e_main_video_20330531094551825.ts"
                ),
                format!("{dir}/1400000000_YWJj-ZGVm.w.._20330531094551825.ts"),
                format!("{dir}/ha1_1400000000_12345.m3u8"),
            ];
            for (i, key) in small.iter().enumerate() {
                let data = pattern(1000 + i * 4097, i as u32);
                up.put_file(key, data.clone()).await.expect("put");
                assert_eq!(up.get(key).await.expect("get"), data, "{key}");
            }
            // Replacing an object.
            up.put_file(&small[0], Bytes::from_static(b"#EXTM3U\n"))
                .await
                .expect("replace");
            assert_eq!(up.get(&small[0]).await.expect("get"), &b"#EXTM3U\n"[..]);

            // Multipart: 20 MiB + a bit in 5 MiB parts (threshold 8 MiB).
            let big_key = format!("{dir}/1400000000_12345_1.mp4");
            let big = pattern(20 * MIB as usize + 12345, 99);
            let t0 = Instant::now();
            up.put_file(&big_key, big.clone()).await.expect("multipart");
            eprintln!("multipart 20 MiB: {:?}", t0.elapsed());
            assert_eq!(up.get(&big_key).await.expect("get"), big);
            let info = up.head(&big_key).await.expect("head").expect("exists");
            assert_eq!(info.size, big.len() as u64);
            // S3 multipart ETags are `"<md5 of part md5s>-<parts>"`.
            assert!(
                info.e_tag.as_deref().is_some_and(|t| t.contains("-5")),
                "{info:?}"
            );

            // From a file, part by part: a payload behind a 100-byte
            // header (as in a spool entry), 12 MiB in three 5 MiB parts.
            let from_file_key = format!("{dir}/1400000000_12345_2.mp4");
            let payload = pattern(12 * MIB as usize, 7);
            let file = std::env::temp_dir().join(format!("kiroku-s3-part-{}", std::process::id()));
            let mut raw = vec![0xAB; 100];
            raw.extend_from_slice(&payload);
            std::fs::write(&file, &raw).expect("write");
            up.put_from_file(&from_file_key, &file, 100, payload.len() as u64)
                .await
                .expect("multipart from a file");
            assert_eq!(up.get(&from_file_key).await.expect("get"), payload);
            let info = up
                .head(&from_file_key)
                .await
                .expect("head")
                .expect("exists");
            assert!(
                info.e_tag.as_deref().is_some_and(|t| t.contains("-3")),
                "{info:?}"
            );
            // Small: one PUT of the byte range.
            up.put_from_file(&small[3], &file, 100, 1000)
                .await
                .expect("small from a file");
            assert_eq!(up.get(&small[3]).await.expect("get"), payload.slice(..1000));
            // A file shorter than asked: a local error, nothing stored.
            let e = up
                .put_from_file(&format!("{dir}/short.mp4"), &file, 100, 13 * MIB)
                .await
                .expect_err("short file");
            assert_eq!(e.code(), "LocalReadError", "{e}");
            let _ = std::fs::remove_file(&file);

            let listed: Vec<String> = up
                .list(dir)
                .await
                .expect("list")
                .into_iter()
                .map(|o| o.key)
                .collect();
            let mut want: Vec<String> = small.to_vec();
            want.push(big_key.clone());
            want.push(from_file_key.clone());
            want.sort();
            assert_eq!(listed, want);
            assert_eq!(
                up.head(&format!("{dir}/nope.ts")).await.expect("head"),
                None
            );

            // From a thread outside the runtime, as recorders call it.
            let up = std::sync::Arc::new(up);
            let handle = tokio::runtime::Handle::current();
            let blocking = std::sync::Arc::clone(&up);
            tokio::task::spawn_blocking(move || {
                blocking.put_file_blocking(&handle, "t/a.ts", Bytes::from_static(b"seg"))
            })
            .await
            .expect("join")
            .expect("blocking put");
            assert_eq!(up.get("t/a.ts").await.expect("get"), &b"seg"[..]);

            // Keys are checked before anything is sent.
            let e = up
                .put_file("a/../b", Bytes::new())
                .await
                .expect_err("bad key");
            assert_eq!(e.kind(), ErrorKind::InvalidKey);

            // A bucket that does not exist: the service's code, final.
            let wrong = moto.uploader("no-such-bucket", 1);
            let e = wrong
                .put_file(&small[1], Bytes::from_static(b"x"))
                .await
                .expect_err("no bucket");
            eprintln!("wrong bucket: {e} (status {:?})", e.status());
            assert_eq!(e.kind(), ErrorKind::Service, "{e}");
            assert_eq!(e.code(), "NoSuchBucket", "{e}");
            assert_eq!(e.status(), Some(404));
            assert!(!e.message().is_empty() && !e.message().contains('<'), "{e}");
            assert!(!e.retryable(), "{e}");
            let e = wrong
                .put_file(&big_key, big.slice(..9 * MIB as usize))
                .await
                .expect_err("no bucket, multipart");
            assert_eq!(e.code(), "NoSuchBucket", "{e}");
            assert!(!e.retryable());
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn transport_errors_are_retryable_and_recover() {
            let Some(bin) = moto_binary() else { return };
            let mut moto = Moto::start(bin);
            moto.create_bucket("rec").await;
            let up = moto.uploader("rec", 0);
            let key = "t/1400000000_12345.m3u8";
            up.put_file(key, Bytes::from_static(b"one"))
                .await
                .expect("put");

            moto.stop();
            let e = up
                .put_file(key, Bytes::from_static(b"two"))
                .await
                .expect_err("server down");
            eprintln!("server down: {e}");
            assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
            assert!(e.retryable(), "{e}");
            assert!(["ConnectError", "RequestError"].contains(&e.code()), "{e}");
            let e = up
                .put_file(key, pattern(9 * MIB as usize, 1))
                .await
                .expect_err("server down, multipart");
            assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
            assert!(e.retryable(), "{e}");

            // Back (moto keeps state in memory: the bucket is made again).
            moto.restart();
            moto.create_bucket("rec").await;
            up.put_file(key, Bytes::from_static(b"two"))
                .await
                .expect("put after restart");
            assert_eq!(up.get(key).await.expect("get"), &b"two"[..]);
        }

        /// With signatures checked: the requests are signed right (single
        /// and multipart), and credential errors carry the service's code.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn credential_errors_carry_the_service_code() {
            let Some(bin) = moto_binary() else { return };
            // Unchecked: the bucket and two users (3 IAM requests each).
            let moto = Moto::start_with(bin, Some(7));
            moto.create_bucket("rec").await;
            let (key_id, secret) = moto.user("writer", r#""s3:*""#).await;
            let reader = moto.user("reader", r#"["s3:GetObject"]"#).await;

            let up = moto.uploader_as("rec", 1, (&key_id, &secret));
            let key = "p/t/1400000000_12345_1.mp4";
            let big = pattern(11 * MIB as usize, 7);
            up.put_file(key, big.clone())
                .await
                .expect("signed multipart");
            up.put_file("p/t/a.m3u8", Bytes::from_static(b"#EXTM3U\n"))
                .await
                .expect("signed put");
            assert_eq!(up.get(key).await.expect("signed get"), big);

            let cases = [
                ((key_id.as_str(), "wrong-secret"), "SignatureDoesNotMatch"),
                (
                    ("AKIANOSUCHKEY0000000", secret.as_str()),
                    "InvalidAccessKeyId",
                ),
                ((reader.0.as_str(), reader.1.as_str()), "AccessDenied"),
            ];
            for (creds, code) in cases {
                let up = moto.uploader_as("rec", 1, creds);
                for data in [Bytes::from_static(b"x"), big.slice(..9 * MIB as usize)] {
                    let e = up.put_file(key, data).await.expect_err(code);
                    eprintln!("{code}: {e}");
                    assert_eq!(e.kind(), ErrorKind::Service, "{e}");
                    assert_eq!(e.code(), code, "{e}");
                    assert_eq!(e.status(), Some(403), "{e}");
                    assert!(!e.message().is_empty(), "{e}");
                    assert!(!e.retryable(), "{e}");
                }
            }
        }
    }
}
