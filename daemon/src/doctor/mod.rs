//! `kiroku doctor`: checks what an installer gets wrong and says how to
//! fix each. The judgments are pure ([`report`]); this module measures: it
//! loads the configuration, binds the ports, asks `public_url` for a
//! nonce, writes into `data_dir`, probes io_uring, the GPU and NVENC, puts
//! and deletes a probe object in each S3 target given with `--s3`, and asks
//! each callback URL for an answer. Nothing here changes the box: the
//! ports are released, the probe files and objects removed.
//!
//! A running daemon holds its ports; the checks then ask it (`/healthz`)
//! instead of binding them, so `kiroku doctor` also checks a live box.

pub mod report;

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use report::{Finding, Report};

/// What `kiroku doctor` was asked to check.
#[derive(Debug, Clone)]
pub struct DoctorArgs {
    pub config: Option<PathBuf>,
    /// Files each holding a `CloudStorage` object as Tencent's API takes it
    /// (`{"Vendor": 1, "Region": …, "Bucket": …, "AccessKey": …,
    /// "SecretKey": …}`): the buckets to probe.
    pub s3_targets: Vec<PathBuf>,
}

const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs every check; never fails itself (a check that cannot run says so).
pub async fn run(args: &DoctorArgs) -> Report {
    let mut report = Report::default();
    report.push(report::clock_plausible(crate::clock::unix_secs() as i64));
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => {
                report.push(Finding::ok(
                    "config",
                    format!("{} is valid", path.display()),
                ));
                c
            }
            Err(e) => {
                report.push(Finding::fail(
                    "config",
                    format!("{}: {e}", path.display()),
                    "correct the file (docs/configuration.md lists every key); `kiroku check-config FILE` checks it alone",
                ));
                return report;
            }
        },
        None => {
            report.push(Finding::ok(
                "config",
                "no --config: the embedded defaults (as `kiroku serve` without one)",
            ));
            Config::embedded_defaults()
        }
    };
    secrets_and_tls(&config, &mut report);
    let http = match reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            report.push(Finding::fail(
                "http client",
                e.to_string(),
                "this build cannot make HTTP requests",
            ));
            return report;
        }
    };
    let running = listen_port(&config, &http, &mut report).await;
    public_url(&config, &http, running, &mut report).await;
    udp_port(&config, running, &mut report);
    report.push(report::advertised_addresses(
        &advertised(&config),
        &local_addresses(&advertised(&config)),
    ));
    data_dir(&config, &mut report);
    io_uring(&config.data_dir, &mut report);
    gpu(&mut report).await;
    for path in &args.s3_targets {
        s3_target(&config, path, &http, &mut report).await;
    }
    callbacks(&config, &http, &mut report).await;
    report
}

fn secrets_and_tls(config: &Config, report: &mut Report) {
    if let Some(files) = &config.server.tls {
        match crate::tls::load(files) {
            Ok(_) => report.push(Finding::ok(
                "tls",
                format!("certificate {} loads", files.cert.display()),
            )),
            Err(e) => report.push(Finding::fail(
                "tls",
                e.to_string(),
                "point server.tls_cert and server.tls_key at a PEM chain and its key, readable by kiroku",
            )),
        }
    }
    match crate::server::sealer_for(&config.secrets) {
        Ok(s) if s.is_sealing() => report.push(Finding::ok(
            "secrets at rest",
            "sealed with secrets.key_file",
        )),
        Ok(_) => report.push(Finding::warn(
            "secrets at rest",
            "no secrets.key_file: customer S3 keys and UserSigs are stored plain (in 0600 files)",
            "`head -c 32 /dev/urandom | base64 > /etc/kiroku/secret.key; chmod 600 /etc/kiroku/secret.key` and set secrets.key_file",
        )),
        Err(e) => report.push(Finding::fail(
            "secrets at rest",
            e.to_string(),
            "fix secrets.key_file (base64 of 32 bytes, mode 0600)",
        )),
    }
}

/// Where to reach `addr` from this box (an unspecified address: loopback).
fn reach(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => ([127, 0, 0, 1], addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => {
            (std::net::Ipv6Addr::LOCALHOST, addr.port()).into()
        }
        _ => addr,
    }
}

/// `server.listen` (and `metrics_listen`): free, or held by a kiroku that
/// answers `/healthz`. Returns whether a kiroku runs there.
async fn listen_port(config: &Config, http: &reqwest::Client, report: &mut Report) -> bool {
    let mut running = false;
    let ports = std::iter::once(("server.listen", config.server.listen)).chain(
        config
            .server
            .metrics_listen
            .map(|a| ("server.metrics_listen", a)),
    );
    for (key, addr) in ports {
        match TcpListener::bind(addr) {
            Ok(listener) => {
                drop(listener);
                report.push(Finding::ok(key, format!("{addr} is free")));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let scheme = if config.server.tls.is_some() && key == "server.listen" {
                    "https"
                } else {
                    "http"
                };
                let url = format!("{scheme}://{}/healthz", reach(addr));
                // A TLS listener's certificate names public_url's host, not
                // loopback: the check is only whether kiroku answers.
                let answered = insecure_client()
                    .get(&url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16());
                match answered {
                    Ok(200 | 503) => {
                        running |= key == "server.listen";
                        report.push(Finding::ok(
                            key,
                            format!("{addr} is held by a running kiroku (it answers {url})"),
                        ));
                    }
                    _ => report.push(Finding::fail(
                        key,
                        format!("{addr} is in use by another program"),
                        format!("stop it (`ss -ltnp 'sport = :{}'` names it) or choose another {key}", addr.port()),
                    )),
                }
            }
            Err(e) => report.push(Finding::fail(
                key,
                format!("{addr} cannot be bound: {e}"),
                "ports below 1024 need CAP_NET_BIND_SERVICE (the packaged unit grants it); an address must be one of this host's",
            )),
        }
    }
    let _ = http;
    running
}

/// A client that does not verify certificates: only for asking a local
/// listener whether it is kiroku.
fn insecure_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap_or_default()
}

/// `public_url` must lead back to this box: VOD URLs, WHIP resources and
/// (in a fleet) redirects are built from it. With the daemon running it
/// must answer `/healthz`; without, a one-off listener on `server.listen`
/// answers a nonce, which `public_url` must return.
async fn public_url(config: &Config, http: &reqwest::Client, running: bool, report: &mut Report) {
    const CHECK: &str = "server.public_url";
    let base = config.server.public_url.trim_end_matches('/');
    if running {
        let url = format!("{base}/healthz");
        match http.get(&url).send().await {
            Ok(r) if matches!(r.status().as_u16(), 200 | 503) => {
                clock_from(&r, base, report);
                report.push(Finding::ok(CHECK, format!("{url} answers")));
            }
            Ok(r) => report.push(Finding::fail(
                CHECK,
                format!("{url} answers {}: not this kiroku", r.status()),
                "set server.public_url to the URL clients reach this box at (a proxy in front must pass /healthz, /vod and /whip)",
            )),
            Err(e) => report.push(Finding::fail(
                CHECK,
                format!("{url}: {}", crate::errors::chain(&e)),
                "set server.public_url to the URL clients reach this box at, and check DNS and the firewall from the box itself",
            )),
        }
        return;
    }
    if config.server.tls.is_some() {
        report.push(Finding::skip(
            CHECK,
            "TLS listener: checked only while kiroku runs (start it, then run doctor again)",
        ));
        return;
    }
    let listener = match TcpListener::bind(config.server.listen) {
        Ok(l) => l,
        Err(e) => {
            report.push(Finding::skip(
                CHECK,
                format!("server.listen could not be bound to answer it: {e}"),
            ));
            return;
        }
    };
    let nonce = format!("kiroku-doctor-{:016x}", rand::random::<u64>());
    let answer = nonce.clone();
    let server = std::thread::spawn(move || answer_once(listener, &answer));
    let url = format!("{base}/.kiroku-doctor");
    let got = http.get(&url).send().await;
    // The one-off listener gives up on its own after HTTP_TIMEOUT.
    let _ = tokio::task::spawn_blocking(move || server.join()).await;
    match got {
        Ok(r) => {
            clock_from(&r, base, report);
            let body = r.text().await.unwrap_or_default();
            if body.trim() == nonce {
                report.push(Finding::ok(
                    CHECK,
                    format!("{base} leads back to server.listen {}", config.server.listen),
                ));
            } else {
                report.push(Finding::fail(
                    CHECK,
                    format!("{url} was answered by something else than this box's server.listen"),
                    "set server.public_url to the URL that reaches server.listen (or make the proxy in front forward to it)",
                ));
            }
        }
        Err(e) => report.push(Finding::fail(
            CHECK,
            format!("{url}: {}", crate::errors::chain(&e)),
            "set server.public_url to the URL clients reach this box at, and check DNS and the firewall from the box itself",
        )),
    }
}

/// Answers the first HTTP request on `listener` with `body`; gives up
/// after [`HTTP_TIMEOUT`].
fn answer_once(listener: TcpListener, body: &str) {
    use std::io::{Read, Write};
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + HTTP_TIMEOUT;
    while std::time::Instant::now() < deadline {
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return,
        }
    }
}

/// The UDP port publishers' media arrives on: free (or held by the running
/// kiroku), and reaching it on each advertised address works from here.
fn udp_port(config: &Config, running: bool, report: &mut Report) {
    const CHECK: &str = "ingest.udp_listen";
    let addr = config.ingest.udp_listen;
    let hint = report::udp_firewall_hint(addr.port());
    match UdpSocket::bind(addr) {
        Ok(socket) => {
            let reached = loop_back(&socket, &advertised(config));
            if reached.is_empty() {
                report.push(Finding::ok(
                    CHECK,
                    format!("UDP {addr} is free; from other machines: {hint}"),
                ));
            } else {
                report.push(Finding::fail(
                    CHECK,
                    format!(
                        "UDP {addr}: a datagram to {} did not arrive",
                        reached.join(", ")
                    ),
                    format!("check the local firewall; {hint}"),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && running => report.push(Finding::ok(
            CHECK,
            format!("UDP {addr} is held by the running kiroku; from other machines: {hint}"),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => report.push(Finding::fail(
            CHECK,
            format!("UDP {addr} is in use by another program"),
            format!(
                "stop it (`ss -lunp 'sport = :{}'` names it) or choose another ingest.udp_listen",
                addr.port()
            ),
        )),
        Err(e) => report.push(Finding::fail(
            CHECK,
            format!("UDP {addr} cannot be bound: {e}"),
            "ingest.udp_listen must be an address of this host (or 0.0.0.0)",
        )),
    }
}

/// Sends a datagram to `socket`'s port on each advertised address of this
/// host; returns those it did not arrive from.
fn loop_back(socket: &UdpSocket, advertised: &[IpAddr]) -> Vec<String> {
    let Ok(port) = socket.local_addr().map(|a| a.port()) else {
        return Vec::new();
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    let mut missing = Vec::new();
    for ip in advertised {
        let to = SocketAddr::new(*ip, port);
        let from = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        // Only addresses of this host: a NATed public address is checked
        // from outside, not here.
        if UdpSocket::bind(SocketAddr::new(*ip, 0)).is_err() {
            continue;
        }
        let sent = UdpSocket::bind(from).and_then(|s| s.send_to(b"kiroku-doctor", to));
        let mut buf = [0u8; 64];
        let arrived = sent.is_ok() && matches!(socket.recv_from(&mut buf), Ok((13, _)));
        if !arrived {
            missing.push(to.to_string());
        }
    }
    missing
}

/// The addresses put in ICE candidates, as the ingest computes them.
fn advertised(config: &Config) -> Vec<IpAddr> {
    if config.ingest.advertised_addresses.is_empty() {
        let ip = config.ingest.udp_listen.ip();
        if ip.is_unspecified() {
            Vec::new()
        } else {
            vec![ip]
        }
    } else {
        config.ingest.advertised_addresses.clone()
    }
}

/// Those of `candidates` that are this host's (an address can be bound
/// only where the host has it).
fn local_addresses(candidates: &[IpAddr]) -> Vec<IpAddr> {
    candidates
        .iter()
        .copied()
        .filter(|ip| UdpSocket::bind(SocketAddr::new(*ip, 0)).is_ok())
        .collect()
}

/// `data_dir`: creatable, writable and synced, with room. (Its contents
/// are kiroku's to keep private: state and spool are made 0600/0700.)
fn data_dir(config: &Config, report: &mut Report) {
    const CHECK: &str = "data_dir";
    let dir = &config.data_dir;
    if let Err(e) = std::fs::create_dir_all(dir) {
        report.push(Finding::fail(
            CHECK,
            format!("{} cannot be created: {e}", dir.display()),
            "create it for the service's user (`install -d -o kiroku -m 700 DIR`) or point data_dir elsewhere",
        ));
        return;
    }
    let probe = dir.join(format!(".kiroku-doctor-{:016x}", rand::random::<u64>()));
    let written = std::fs::File::create(&probe)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"kiroku doctor")?;
            f.sync_all()
        })
        .and_then(|()| std::fs::remove_file(&probe));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&probe);
        report.push(Finding::fail(
            CHECK,
            format!("{} is not writable: {e}", dir.display()),
            "`chown -R kiroku: DIR` (the user kiroku runs as) or point data_dir elsewhere",
        ));
        return;
    }
    report.push(Finding::ok(
        CHECK,
        format!("{} is writable and synced", dir.display()),
    ));
    match rustix::fs::statvfs(dir) {
        Ok(st) => {
            let available = st.f_bavail.saturating_mul(st.f_frsize);
            let total = st.f_blocks.saturating_mul(st.f_frsize);
            report.push(report::free_space(
                available,
                total,
                config.storage.spool_capacity_bytes,
            ));
        }
        Err(e) => report.push(Finding::skip(
            "data_dir free space",
            format!("statvfs: {e}"),
        )),
    }
}

/// The spool's io_uring writer, probed as the spool does at start.
fn io_uring(dir: &Path, report: &mut Report) {
    const CHECK: &str = "io_uring";
    match crate::output::spool::io_uring_available(dir) {
        Ok(()) => report.push(Finding::ok(
            CHECK,
            "available: the spool writes through io_uring",
        )),
        Err(e) => report.push(Finding::warn(
            CHECK,
            format!("unavailable ({e}): the spool falls back to plain writes"),
            "recording works; for io_uring use Linux 5.6 or later and allow it (container runtimes' seccomp profiles and kernel.io_uring_disabled block it)",
        )),
    }
}

/// The compositor kiroku would pick, and the video engines present.
async fn gpu(report: &mut Report) {
    let selected = tokio::task::spawn_blocking(|| {
        kiroku_gpu::select::select_compositor(kiroku_gpu::select::CompositorChoice::Auto)
            .map(|s| (s.reason, s.gpu.is_some()))
    })
    .await;
    match selected {
        Ok(Ok((reason, true))) => report.push(Finding::ok("gpu", reason)),
        Ok(Ok((reason, false))) => report.push(Finding::ok(
            "gpu",
            format!("{reason}: mixed recordings compose on the CPU (supported; fewer per box)"),
        )),
        Ok(Err(e)) => report.push(Finding::warn(
            "gpu",
            e.to_string(),
            "install the GPU's Vulkan driver (Mesa, or NVIDIA's) to compose on it",
        )),
        Err(e) => report.push(Finding::warn("gpu", e.to_string(), "report this")),
    }
    report.push(nvenc());
    report.push(nvdec());
}

#[cfg(feature = "nvenc")]
fn nvdec() -> Finding {
    match kiroku_gpu::nvdec::probe_h264() {
        kiroku_gpu::nvdec::Probe::Available(d) => Finding::ok(
            "nvdec",
            format!(
                "{}: {} NVDEC engine(s), H.264 up to {}x{}; kiroku decodes on the CPU (NVDEC is not used yet)",
                d.device_name, d.engines, d.max_width, d.max_height
            ),
        ),
        kiroku_gpu::nvdec::Probe::Unavailable(why) => Finding::ok(
            "nvdec",
            format!("not available ({why}); kiroku decodes on the CPU"),
        ),
    }
}

#[cfg(not(feature = "nvenc"))]
fn nvdec() -> Finding {
    let device = ["/dev/nvidia0", "/dev/nvidiactl"]
        .iter()
        .all(|p| Path::new(p).exists());
    Finding::ok(
        "nvdec",
        if device {
            "an NVIDIA device is present, not probed (build with --features nvenc); kiroku decodes on the CPU"
        } else {
            "no NVIDIA device; kiroku decodes on the CPU"
        },
    )
}

#[cfg(feature = "nvenc")]
fn nvenc() -> Finding {
    match kiroku_gpu::nvenc::probe() {
        kiroku_gpu::nvenc::Probe::Available {
            device_name,
            max_api_version,
        } => Finding::ok(
            "nvenc",
            format!("{device_name}, NVENC API {max_api_version:?}: mixed recordings encode on it"),
        ),
        kiroku_gpu::nvenc::Probe::Unavailable(why) => Finding::ok(
            "nvenc",
            format!("not available ({why}): mixed recordings encode on the CPU (OpenH264)"),
        ),
    }
}

#[cfg(not(feature = "nvenc"))]
fn nvenc() -> Finding {
    Finding::ok(
        "nvenc",
        "not built in (build with --features nvenc): mixed recordings encode on the CPU (OpenH264)",
    )
}

/// One bucket: a probe object put, read back (HEAD) and deleted, with the
/// bucket's own error code when it refuses.
async fn s3_target(config: &Config, path: &Path, http: &reqwest::Client, report: &mut Report) {
    let check = format!("s3 {}", path.display());
    let storage = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|json| crate::api::validate::cloud_storage_json(&json))
    {
        Ok(s) => s,
        Err(e) => {
            report.push(Finding::fail(
                check,
                format!("not a CloudStorage object: {e}"),
                "give a file with {\"Vendor\": 0|1, \"Region\", \"Bucket\", \"AccessKey\", \"SecretKey\"} as in CreateCloudRecording",
            ));
            return;
        }
    };
    let target = match crate::output::s3::S3Target::from_params(&storage, &config.storage.s3) {
        Ok(t) => t,
        Err(e) => {
            report.push(Finding::fail(
                check,
                e.to_string(),
                "set [storage.s3] for this vendor (endpoint, path_style, allow_http): docs/configuration.md",
            ));
            return;
        }
    };
    let check = format!("s3 {}", target.bucket_url());
    let uploader = match crate::output::s3::S3Uploader::new(&target) {
        Ok(u) => u,
        Err(e) => {
            report.push(Finding::fail(check, e.to_string(), "check [storage.s3]"));
            return;
        }
    };
    let key = format!(".kiroku-doctor/{:016x}", rand::random::<u64>());
    let steps = async {
        uploader
            .put_file(&key, bytes::Bytes::from_static(b"kiroku doctor probe"))
            .await
            .map_err(|e| ("PUT", e))?;
        let found = uploader.head(&key).await.map_err(|e| ("HEAD", e))?;
        uploader.delete(&key).await.map_err(|e| ("DELETE", e))?;
        Ok::<_, (&str, crate::output::s3::UploadError)>(found.is_some())
    };
    match steps.await {
        Ok(true) => report.push(Finding::ok(
            check,
            format!("PUT, HEAD and DELETE of {key} succeeded"),
        )),
        Ok(false) => report.push(Finding::fail(
            check,
            format!("{key} was put but HEAD does not find it"),
            "the endpoint is not a consistent S3 implementation: check [storage.s3]",
        )),
        Err((step, e)) => report.push(Finding::fail(
            check,
            format!("{step} failed: {} {}", e.code(), e.message()),
            match e.code() {
                "NoSuchBucket" => "create the bucket, or correct Bucket/Region".to_owned(),
                "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" => {
                    "the keys lack permission: allow s3:PutObject, s3:GetObject and s3:DeleteObject on the bucket".to_owned()
                }
                _ => "check the endpoint ([storage.s3]), the network path and the keys".to_owned(),
            },
        )),
    }
    // The bucket's clock, for the signature's sake.
    if let Ok(r) = http.head(target.bucket_url()).send().await {
        clock_from(&r, &target.bucket_url(), report);
    }
}

/// Each configured callback URL answers an HTTP request (any status: a
/// receiver may refuse a GET; nothing is posted, so no receiver acts on a
/// probe).
async fn callbacks(config: &Config, http: &reqwest::Client, report: &mut Report) {
    let targets: Vec<(u32, &str)> = config
        .apps
        .iter()
        .filter_map(|a| a.callback.as_ref().map(|c| (a.sdk_app_id, c.url.as_str())))
        .collect();
    if targets.is_empty() {
        report.push(Finding::skip(
            "callbacks",
            "no [[apps]] callback URL configured",
        ));
        return;
    }
    for (app, url) in targets {
        let check = format!("callback of app {app}");
        match http.get(url).send().await {
            // 501: a receiver that takes only POST, as callbacks are.
            Ok(r) if r.status().is_server_error() && r.status().as_u16() != 501 => {
                report.push(Finding::warn(
                    check,
                    format!("{url} answers {}", r.status()),
                    "the receiver is failing: callbacks are retried for callbacks.retry_for, then given up",
                ));
            }
            Ok(r) => {
                clock_from(&r, url, report);
                report.push(Finding::ok(check, format!("{url} answers ({})", r.status())));
            }
            Err(e) => report.push(Finding::fail(
                check,
                format!("{url}: {}", crate::errors::chain(&e)),
                "start the receiver or correct the app's callback URL; check DNS and the firewall from the box itself",
            )),
        }
    }
}

/// A clock finding from a response's `Date` header, if it has one.
fn clock_from(response: &reqwest::Response, source: &str, report: &mut Report) {
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    if let Some(remote) = date {
        let remote = i64::try_from(remote.as_secs()).unwrap_or(i64::MAX);
        report.push(report::clock_skew(
            source,
            crate::clock::unix_secs() as i64,
            remote,
        ));
    }
}
