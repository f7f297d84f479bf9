//! Downloading watermark and background images.
//!
//! Policy of [`fetch_image`]:
//!
//! - **Schemes.** Only `http` and `https` URLs are fetched.
//! - **Addresses.** Every address connected to passes the
//!   [`AddressPolicy`]: a host name is resolved by the client's own
//!   resolver, which hands reqwest only allowed addresses (so the address
//!   checked is the address connected to: no DNS rebinding); a literal IP is
//!   checked before the request. The same holds for every redirect hop (at
//!   most [`MAX_REDIRECTS`]).
//! - **Time.** The whole download (connecting, the response head and the
//!   body) must finish within [`FetchLimits::timeout`], 10 s by default.
//! - **Size.** The body may be at most [`FetchLimits::max_bytes`] long,
//!   5 MiB by default (the API's limit for watermark images). A larger
//!   `Content-Length` is refused before any of the body is read, and a body
//!   without one is cut off as soon as it passes the limit.
//! - **Status.** Only a 2xx answer is accepted.
//! - **Content.** The body must be a PNG or JPEG file by its first bytes
//!   ([`ImageFormat::sniff`]); `Content-Type` is not consulted. A body that
//!   starts otherwise is refused as soon as its first bytes arrive.
//!
//! Each way a download fails is its own [`FetchError`] variant, whose message
//! is fit for logs and for the failure callback (309).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::address_policy::AddressPolicy;
use super::overlay::{describe_start, ImageFormat};

/// Redirect hops followed at most.
pub const MAX_REDIRECTS: usize = 5;

/// An HTTP client for layout images that connects only where the
/// [`AddressPolicy`] allows.
#[derive(Clone)]
pub struct ImageClient {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl ImageClient {
    pub fn new(policy: AddressPolicy) -> Self {
        let policy = Arc::new(policy);
        let redirects = policy.clone();
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiroku/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                match literal_ip(attempt.url()).map(|ip| redirects.check(ip)) {
                    Some(Err(why)) => attempt.error(format!("redirect refused: {why}")),
                    _ => attempt.follow(),
                }
            }))
            .build()
            .unwrap_or_default();
        Self { http, policy }
    }
}

/// The URL's host when it is an IP literal (reqwest resolves nothing then).
fn literal_ip(url: &reqwest::Url) -> Option<std::net::IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Resolves with the system resolver and keeps only allowed addresses.
struct PolicyResolver {
    policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refusal.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusal.unwrap_or_else(|| "no address".to_owned());
                return Err(format!("{host} refused: {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Longest signature [`ImageFormat::sniff`] looks at.
const SNIFF_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    pub timeout: Duration,
    pub max_bytes: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_bytes: 5 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("unsupported URL scheme {0:?}: only http and https are fetched")]
    UnsupportedScheme(String),
    #[error("download did not finish within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("server answered HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("Content-Length {content_length} bytes is over the limit of {limit} bytes")]
    DeclaredTooLarge { content_length: u64, limit: u64 },
    #[error("body is over the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("body is not a PNG or JPEG image: it {start}")]
    NotAnImage { start: String },
    #[error("refused: {0}")]
    Refused(String),
}

impl FetchError {
    /// One line from a reqwest error and its causes, without the URL (the
    /// caller knows it, and it may carry credentials in its query).
    fn transport(error: reqwest::Error) -> Self {
        let error = error.without_url();
        let mut message = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            cause = inner.source();
        }
        Self::Transport(message)
    }
}

/// Downloads the PNG or JPEG image at `url`; see the module docs for what is
/// refused.
pub async fn fetch_image(
    client: &ImageClient,
    url: &str,
    limits: &FetchLimits,
) -> Result<Vec<u8>, FetchError> {
    let url = reqwest::Url::parse(url).map_err(|e| FetchError::InvalidUrl(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FetchError::UnsupportedScheme(url.scheme().to_owned()));
    }
    if let Some(ip) = literal_ip(&url) {
        client.policy.check(ip).map_err(FetchError::Refused)?;
    }
    tokio::time::timeout(
        limits.timeout,
        download(&client.http, url, limits.max_bytes),
    )
    .await
    .map_err(|_| FetchError::Timeout(limits.timeout))?
}

async fn download(
    client: &reqwest::Client,
    url: reqwest::Url,
    max_bytes: u64,
) -> Result<Vec<u8>, FetchError> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(FetchError::transport)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status(status));
    }
    if let Some(content_length) = response.content_length() {
        if content_length > max_bytes {
            return Err(FetchError::DeclaredTooLarge {
                content_length,
                limit: max_bytes,
            });
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(FetchError::transport)? {
        if (body.len() + chunk.len()) as u64 > max_bytes {
            return Err(FetchError::BodyTooLarge { limit: max_bytes });
        }
        let sniffed_before = body.len() >= SNIFF_LEN;
        body.extend_from_slice(&chunk);
        if !sniffed_before && body.len() >= SNIFF_LEN {
            require_image(&body)?;
        }
    }
    require_image(&body)?;
    Ok(body)
}

fn require_image(body: &[u8]) -> Result<(), FetchError> {
    match ImageFormat::sniff(body) {
        Some(_) => Ok(()),
        None => Err(FetchError::NotAnImage {
            start: describe_start(body),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// What the test server does after reading a request head.
    #[derive(Clone)]
    enum Reply {
        /// Writes these bytes and closes the connection.
        Raw(Vec<u8>),
        /// Writes this response head, then nothing, and keeps the connection
        /// open until the test ends.
        Stall(Vec<u8>),
    }

    async fn read_request_head(stream: &TcpStream) -> std::io::Result<()> {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            stream.readable().await?;
            match stream.try_read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            stream.writable().await?;
            match stream.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// An HTTP/1.1 server on 127.0.0.1 answering every request with `reply`.
    async fn serve(reply: Reply) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    if read_request_head(&stream).await.is_err() {
                        return;
                    }
                    match reply {
                        // The client may hang up early (limits); that is
                        // what some tests want.
                        Reply::Raw(bytes) => {
                            let _ = write_all(&stream, &bytes).await;
                        }
                        Reply::Stall(head) => {
                            let _ = write_all(&stream, &head).await;
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                    }
                });
            }
        });
        addr
    }

    fn response(status: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
        let mut out =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for part in body.chunks(chunk) {
            out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    /// The test servers listen on loopback: allowed here, as an operator
    /// would allow their image servers' network.
    fn client() -> ImageClient {
        ImageClient::new(AddressPolicy::new(
            vec!["127.0.0.0/8".parse().expect("net")],
            Vec::new(),
        ))
    }

    fn tiny_png() -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 2, 2);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("png header");
        writer.write_image_data(&[200u8; 16]).expect("png data");
        writer.finish().expect("png finish");
        out
    }

    /// A PNG-looking body of `len` bytes.
    fn png_like(len: usize) -> Vec<u8> {
        let mut body = tiny_png();
        body.resize(len, 0);
        body
    }

    #[tokio::test]
    async fn fetches_a_png() {
        let png = tiny_png();
        let addr = serve(Reply::Raw(response("200 OK", &png))).await;
        let got = fetch_image(
            &client(),
            &format!("http://{addr}/logo.png"),
            &FetchLimits::default(),
        )
        .await
        .expect("fetch");
        assert_eq!(got, png);
    }

    #[tokio::test]
    async fn fetches_a_chunked_jpeg_by_content_not_extension() {
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0];
        jpeg.resize(3000, 7);
        let addr = serve(Reply::Raw(chunked(&jpeg, 100))).await;
        let got = fetch_image(
            &client(),
            &format!("http://{addr}/logo.png?v=1"),
            &FetchLimits::default(),
        )
        .await
        .expect("fetch");
        assert_eq!(got, jpeg);
    }

    #[tokio::test]
    async fn not_found_is_a_status_error() {
        let addr = serve(Reply::Raw(response("404 Not Found", b"no such file"))).await;
        let err = fetch_image(
            &client(),
            &format!("http://{addr}/missing.png"),
            &FetchLimits::default(),
        )
        .await
        .expect_err("404");
        assert!(
            matches!(err, FetchError::Status(s) if s == reqwest::StatusCode::NOT_FOUND),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "server answered HTTP 404 Not Found");
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_refused() {
        let addr = serve(Reply::Raw(response("200 OK", &png_like(5000)))).await;
        let limits = FetchLimits {
            max_bytes: 4096,
            ..FetchLimits::default()
        };
        let err = fetch_image(&client(), &format!("http://{addr}/big.png"), &limits)
            .await
            .expect_err("too large");
        assert!(
            matches!(
                err,
                FetchError::DeclaredTooLarge {
                    content_length: 5000,
                    limit: 4096
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn streamed_body_over_the_limit_is_cut_off() {
        let addr = serve(Reply::Raw(chunked(&png_like(5000), 512))).await;
        let limits = FetchLimits {
            max_bytes: 4096,
            ..FetchLimits::default()
        };
        let err = fetch_image(&client(), &format!("http://{addr}/big.png"), &limits)
            .await
            .expect_err("too large");
        assert!(
            matches!(err, FetchError::BodyTooLarge { limit: 4096 }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn body_exactly_at_the_limit_is_accepted() {
        let body = png_like(4096);
        let addr = serve(Reply::Raw(chunked(&body, 1000))).await;
        let limits = FetchLimits {
            max_bytes: 4096,
            ..FetchLimits::default()
        };
        let got = fetch_image(&client(), &format!("http://{addr}/edge.png"), &limits)
            .await
            .expect("at the limit");
        assert_eq!(got.len(), 4096);
    }

    #[tokio::test]
    async fn slow_server_times_out() {
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n".to_vec();
        let addr = serve(Reply::Stall(head)).await;
        let limits = FetchLimits {
            timeout: Duration::from_millis(300),
            ..FetchLimits::default()
        };
        let started = std::time::Instant::now();
        let err = fetch_image(&client(), &format!("http://{addr}/slow.png"), &limits)
            .await
            .expect_err("timeout");
        assert!(
            matches!(err, FetchError::Timeout(d) if d == Duration::from_millis(300)),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.to_string(), "download did not finish within 300 ms");
    }

    #[tokio::test]
    async fn non_image_body_is_refused() {
        let addr = serve(Reply::Raw(response("200 OK", b"<!DOCTYPE html><p>hi</p>"))).await;
        let err = fetch_image(
            &client(),
            &format!("http://{addr}/logo.png"),
            &FetchLimits::default(),
        )
        .await
        .expect_err("html");
        assert!(matches!(err, FetchError::NotAnImage { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "body is not a PNG or JPEG image: it starts with 3c 21 44 4f 43 54 59 50"
        );
    }

    #[tokio::test]
    async fn empty_body_is_refused() {
        let addr = serve(Reply::Raw(response("200 OK", b""))).await;
        let err = fetch_image(
            &client(),
            &format!("http://{addr}/logo.png"),
            &FetchLimits::default(),
        )
        .await
        .expect_err("empty");
        assert_eq!(
            err.to_string(),
            "body is not a PNG or JPEG image: it is empty"
        );
    }

    #[tokio::test]
    async fn unsupported_schemes_and_bad_urls_are_refused_without_a_request() {
        let limits = FetchLimits::default();
        for (url, scheme) in [
            ("ftp://127.0.0.1/logo.png", "ftp"),
            ("file:///etc/passwd", "file"),
            ("data:image/png;base64,iVBORw0KGgo=", "data"),
        ] {
            let err = fetch_image(&client(), url, &limits)
                .await
                .expect_err("scheme");
            assert!(
                matches!(&err, FetchError::UnsupportedScheme(s) if s == scheme),
                "{url}: {err:?}"
            );
        }
        let err = fetch_image(&client(), "logo.png", &limits)
            .await
            .expect_err("relative");
        assert!(matches!(err, FetchError::InvalidUrl(_)), "{err:?}");
    }

    #[tokio::test]
    async fn refused_connection_is_a_transport_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = fetch_image(
            &client(),
            &format!("http://{addr}/logo.png"),
            &FetchLimits::default(),
        )
        .await
        .expect_err("refused");
        let FetchError::Transport(message) = &err else {
            panic!("{err:?}");
        };
        assert!(!message.contains("/logo.png"), "{message}");
        assert!(message.to_lowercase().contains("refused"), "{message}");
    }
}
