"""TLS on the main listener (server.tls_cert / server.tls_key) and the
separate metrics listener (server.metrics_listen), against the real daemon.

Certificates are made here with the `openssl` CLI: a private CA and two
server certificates it signs for IP 127.0.0.1 (subjectAltName), so every
client below verifies the daemon properly against the CA file; none turns
verification off. What the daemon serves is judged by independent clients:
Tencent's Python SDK (https, `certification=` the CA), aiortc publishing
over https WHIP, `requests`, Python's `ssl` (the served certificate is
compared byte for byte with openssl's DER of the PEM files), and ffprobe on
the recording.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.trtc.v20190722 import models, trtc_client

from kiroku_e2e import (ADMIN_HEADERS, APP_ID, KIROKU_BIN, SECRET_ID, SECRET_KEY, base_config, create_params,
                        free_port, metric_baseline, metric_samples, metric_value, signed_headers, to_toml,
                        wait_until)

pytest.importorskip("aiortc", reason="pip install -r tests/e2e/requirements.txt (aiortc)")
from independent_publisher import Publisher, whip_url  # noqa: E402
from test_storage import GOP_SECONDS, PUBLISH_FPS, check_mp4, check_mp4_against_publisher  # noqa: E402

HEADER_TIMEOUT = 2  # server.header_timeout_seconds where a test needs it short
# A cut is due at the header timeout; the daemon's timer and this
# process's scheduling on a loaded 2-core box: 1.5 s of slack.
CUT_SLACK = 1.5


# --------------------------------------------------------------------------
# Certificates (openssl CLI)
# --------------------------------------------------------------------------

def openssl(*args: str, cwd: Path) -> bytes:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr.decode(errors='replace')}"
    return r.stdout


@dataclass
class ServerCert:
    cert: Path  # PEM
    key: Path  # PEM
    der: bytes  # the certificate as openssl writes it in DER
    subject: str


@dataclass
class Pki:
    ca: Path
    one: ServerCert
    two: ServerCert


SERVER_EXT = ("basicConstraints=critical,CA:FALSE\n"
              "keyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=serverAuth\n"
              "subjectAltName=IP:127.0.0.1\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A private CA and two server certificates for IP 127.0.0.1 that it
    signed: `one` with an EC P-256 key in PKCS#8 (`BEGIN PRIVATE KEY`),
    `two` with an RSA key in PKCS#1 (`BEGIN RSA PRIVATE KEY`), so both
    key formats the daemon claims to read are read."""
    assert shutil.which("openssl"), "the openssl CLI is needed to make the test certificates"
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=kiroku e2e test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d)
    (d / "server.ext").write_text(SERVER_EXT)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "one.key",
            "-out", "one.csr", "-subj", "/CN=kiroku-e2e-one", cwd=d)
    openssl("genrsa", "-traditional", "-out", "two.key", "2048", cwd=d)
    openssl("req", "-new", "-key", "two.key", "-out", "two.csr", "-subj", "/CN=kiroku-e2e-two", cwd=d)
    certs = {}
    for name, serial in (("one", "1001"), ("two", "1002")):
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", serial,
                "-days", "2", "-extfile", "server.ext", "-out", f"{name}.pem", cwd=d)
        der = openssl("x509", "-in", f"{name}.pem", "-outform", "DER", cwd=d)
        certs[name] = ServerCert(d / f"{name}.pem", d / f"{name}.key", der, f"CN=kiroku-e2e-{name}")
    assert (d / "one.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (d / "two.key").read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert certs["one"].der != certs["two"].der
    openssl("verify", "-CAfile", "ca.pem", "one.pem", "two.pem", cwd=d)
    return Pki(d / "ca.pem", certs["one"], certs["two"])


def tls_server(cert: Path, key: Path, **extra) -> dict:
    """The [server] keys of a TLS daemon. public_url is left out (the
    suite's default is http://, which TLS refuses): it defaults to
    https://<listen>."""
    return {"tls_cert": str(cert), "tls_key": str(key), "public_url": None, **extra}


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------

def trtc(port: int, certification: str | None) -> trtc_client.TrtcClient:
    """Tencent's own client as a customer configures it for an https
    endpoint; `certification=None` is the SDK's default (certifi's CAs)."""
    hp = HttpProfile(endpoint=f"127.0.0.1:{port}", reqMethod="POST", protocol="https",
                     certification=certification)
    hp.reqTimeout = 15
    return trtc_client.TrtcClient(credential.Credential(SECRET_ID, SECRET_KEY), "ap-shanghai",
                                  ClientProfile(httpProfile=hp))


def sdk_call(client: trtc_client.TrtcClient, action: str, params: dict) -> dict:
    req = getattr(models, f"{action}Request")()
    req.from_json_string(json.dumps(params))
    return json.loads(getattr(client, action)(req).to_json_string())


@dataclass
class Handshake:
    der: bytes  # the certificate the server presented
    version: str  # "TLSv1.3", ...
    alpn: str | None


def handshake(port: int, ca: Path, *, max_version: ssl.TLSVersion | None = None,
              alpn: list[str] | None = None) -> Handshake:
    """A fresh verified TLS connection (CA file + IP SAN check); what the
    server presented on it."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return Handshake(s.getpeercert(binary_form=True), s.version(), s.selected_alpn_protocol())


def served_cert(port: int, ca: Path) -> bytes:
    return handshake(port, ca).der


def json_log(d) -> list[dict]:
    """The daemon's JSON log records (log.format = "json")."""
    return [json.loads(ln) for ln in d.log_text().splitlines() if ln.startswith("{")]


def log_messages(d, level: str | None = None) -> list[dict]:
    return [r for r in json_log(d) if level is None or r.get("level") == level]


def run(*args, timeout=15) -> subprocess.CompletedProcess:
    return subprocess.run([KIROKU_BIN, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------

def test_sdk_and_whip_over_https_record_what_was_published(kiroku, receiver, pki, tmp_path):
    """A TLS box end to end: Tencent's SDK creates and stops the task over
    https (verifying against the CA), aiortc publishes over https WHIP (its
    session URL is https), and the VOD file, whose URL is on the defaulted
    https public_url, is fetched over https and holds what was published
    (ffprobe)."""
    d = kiroku("tls_rec", ca=pki.ca, callback_url=receiver.url, recording={"segment_seconds": 2},
               server=tls_server(pki.one.cert, pki.one.key))
    assert d.url == f"https://127.0.0.1:{d.port}"
    api = trtc(d.port, str(pki.ca))
    room, user = "4601", "tina"
    params = create_params(room=room, StorageParams={"CloudVod": {"TencentVod": {}}})
    task = sdk_call(api, "CreateCloudRecording", params)["TaskId"]
    assert task, task

    pub = Publisher(whip_url(d.url, APP_ID, room, user), fps=PUBLISH_FPS, keyframe_interval=GOP_SECONDS,
                    verify=str(pki.ca))
    try:
        pub.start(timeout=10)
        # The WHIP resource URL (Location, resolved against the WHIP URL) is
        # on the TLS listener: a DELETE over it travels encrypted too.
        assert pub.session_url.startswith(f"https://127.0.0.1:{d.port}/whip/session/"), pub.session_url
        wait_until(lambda: sdk_call(api, "DescribeCloudRecording",
                                    {"SdkAppId": APP_ID, "TaskId": task})["Status"] == "InProgress",
                   10, 0.2, "the task recording (Describe over https)")
        time.sleep(max(0.0, pub.started_at + 5.0 - time.time()))
    finally:
        pub.stop()
    assert pub.delete_status == 200 and "failed" not in pub.states, (pub, pub.delete_status)
    sdk_call(api, "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": task})

    assert receiver.wait_event(task, 312, 60).payload == {"Status": 0}
    commits = [c.payload for c in receiver.delivered(task) if c.event_type == 311]
    assert len(commits) == 1 and commits[0]["UserId"] == user, commits
    url = commits[0]["VideoUrl"]
    # public_url was left out: it defaults to https://<listen>.
    assert url == f"https://127.0.0.1:{d.port}/vod/{commits[0]['FileId']}.mp4", commits[0]
    r = requests.get(url, timeout=10, verify=str(pki.ca))
    assert r.status_code == 200 and r.headers["Content-Type"] == "video/mp4", (r.status_code, r.headers)
    local = tmp_path / "tls.mp4"
    local.write_bytes(r.content)
    check_mp4(local, ["aac", "h264"], pub.published_seconds, 1.0)
    check_mp4_against_publisher(local, pub)


def test_tls_listener_versions_alpn_and_refused_clients(kiroku, pki):
    """TLS 1.3 and 1.2 clients get the configured certificate and ALPN
    http/1.1. A plain-HTTP request gets no HTTP answer, and a client that
    trusts only the public CAs (the SDK's default, certifi) refuses the
    certificate; both are handshake failures, and the daemon keeps serving."""
    d = kiroku("tls_edge", ca=pki.ca, server=tls_server(pki.one.cert, pki.one.key))
    before = metric_baseline(d.metrics_text(), "kiroku_tls_handshake_failures_total")

    for max_version, want in ((None, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
        h = handshake(d.port, pki.ca, max_version=max_version, alpn=["h2", "http/1.1"])
        assert (h.version, h.alpn) == (want, "http/1.1"), (max_version, h.version, h.alpn)
        assert h.der == pki.one.der, f"{want}: the served certificate is not {pki.one.cert}"

    # Plain HTTP on the TLS port: no HTTP answer, only a TLS alert record
    # (content type 21; rustls sends decode_error) or nothing before the close.
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
        s.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\nConnection: close\r\n\r\n".encode())
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
    print(f"plain HTTP to the TLS port got {got[:40]!r}")
    assert got == b"" or (got[:1] == b"\x15" and len(got) == 7), got[:200]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{d.port}/healthz", timeout=5)

    # The SDK without certification= trusts certifi's public CAs only.
    with pytest.raises(TencentCloudSDKException) as e:
        sdk_call(trtc(d.port, None), "DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "nosuchtask"})
    assert e.value.code == "ClientNetworkError" and "CERTIFICATE_VERIFY_FAILED" in e.value.message, \
        (e.value.code, e.value.message)
    # A client that checks the name refuses the certificate for another name.
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|doesn't match"):
            ctx.wrap_socket(raw, server_hostname="localhost")

    # Still serving, over TLS, to a client that trusts the CA.
    r = requests.get(d.url + "/healthz", timeout=5, verify=str(pki.ca))
    assert r.status_code == 200 and r.text.strip() == "ok"
    err = d.sdk().error("DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "nosuchtask"})
    assert err.code == "FailedOperation.TaskNotExist", (err.code, err.message)
    # The raw plain-HTTP client, requests' http://, the SDK and the name
    # check: 4 (each counted by its connection's task, maybe a moment later).
    wait_until(lambda: d.metric("kiroku_tls_handshake_failures_total") - before >= 4, 3, 0.1,
               "4 handshake failures counted")
    time.sleep(0.2)  # and no more
    failures = d.metric("kiroku_tls_handshake_failures_total") - before
    assert failures == 4, f"kiroku_tls_handshake_failures_total rose by {failures}, expected 4"


def test_sighup_reloads_the_pair_and_a_bad_pair_keeps_the_one_in_use(kiroku, pki, tmp_path):
    """SIGHUP reads the files again: new connections get the new certificate
    while an open connection keeps working; a pair that does not load is
    logged at ERROR (naming the file) and the pair in use goes on serving."""
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.pem", live / "server.key"
    shutil.copy(pki.one.cert, cert)
    shutil.copy(pki.one.key, key)
    d = kiroku("tls_hup", ca=pki.ca, server=tls_server(cert, key), log={"format": "json", "level": "info"})
    assert served_cert(d.port, pki.ca) == pki.one.der

    # An open keep-alive connection, made with the first certificate.
    conn = http.client.HTTPSConnection("127.0.0.1", d.port, timeout=5,
                                       context=ssl.create_default_context(cafile=str(pki.ca)))
    conn.request("GET", "/healthz")
    assert conn.getresponse().read().strip() == b"ok"

    # Renewal as a deploy hook does it: new files replace the old ones.
    for src, dst in ((pki.two.cert, cert), (pki.two.key, key)):
        tmp = dst.with_suffix(".new")
        shutil.copy(src, tmp)
        os.replace(tmp, dst)
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_until(lambda: served_cert(d.port, pki.ca) == pki.two.der, 5, 0.1,
               f"a new connection to present {pki.two.subject} after SIGHUP")
    conn.request("GET", "/healthz")
    assert conn.getresponse().read().strip() == b"ok", "the connection opened before the reload was dropped"
    assert conn.sock.getpeercert(binary_form=True) == pki.one.der
    conn.close()
    text = d.metrics_text()
    assert metric_value(text, "kiroku_tls_reloads_total", {"result": "ok"}) == 1, metric_samples(
        text, "kiroku_tls_reloads_total")
    assert any(r["fields"].get("message") == "SIGHUP received: TLS certificate reloaded"
               for r in log_messages(d, "INFO")), d.log_tail(20)

    # A bad renewal: garbage in the certificate file.
    cert.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_until(lambda: metric_value(d.metrics_text(), "kiroku_tls_reloads_total", {"result": "failed"},
                                    default=0) >= 1, 5, 0.1, "the failed reload to be counted")
    for _ in range(3):
        assert served_cert(d.port, pki.ca) == pki.two.der, "a failed reload changed the certificate in use"
    text = d.metrics_text()
    reloads = {s["result"]: v for s, v in metric_samples(text, "kiroku_tls_reloads_total")}
    assert reloads == {"ok": 1, "failed": 1}, reloads
    assert 'kiroku_tls_reloads_total{result="failed"} 1' in text.splitlines()
    assert 'kiroku_tls_reloads_total{result="ok"} 1' in text.splitlines()
    errors = log_messages(d, "ERROR")
    assert len(errors) == 1, errors
    assert "NOT reloaded" in errors[0]["fields"]["message"] and str(cert) in errors[0]["fields"]["error"], errors
    assert d.running
    # The API still answers over the pair in use.
    err = d.sdk().error("DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "nosuchtask"})
    assert err.code == "FailedOperation.TaskNotExist", (err.code, err.message)


def test_a_stalled_handshake_is_cut_at_the_header_timeout(kiroku, pki):
    """A client that connects and sends nothing, and one that stops inside
    its ClientHello, are each cut at server.header_timeout_seconds and
    counted; meanwhile other clients are served at once. /metrics is on its
    own plain listener here (server.metrics_listen), so reading it opens no
    TLS connection."""
    mport = free_port()
    d = kiroku("tls_stall", ca=pki.ca, server=tls_server(pki.one.cert, pki.one.key,
                                                           header_timeout_seconds=HEADER_TIMEOUT,
                                                           metrics_listen=f"127.0.0.1:{mport}"))
    assert d.metrics_url == f"http://127.0.0.1:{mport}"
    # The TLS listener no longer serves /metrics, still /healthz.
    assert requests.get(d.url + "/metrics", timeout=5, verify=str(pki.ca)).status_code == 404
    before = metric_baseline(d.metrics_text(), "kiroku_tls_handshake_failures_total")

    silent = socket.create_connection(("127.0.0.1", d.port), timeout=HEADER_TIMEOUT + 5)
    opened = {"silent": time.monotonic()}
    partial = socket.create_connection(("127.0.0.1", d.port), timeout=HEADER_TIMEOUT + 5)
    # A TLS handshake record header announcing 512 bytes, and 3 of them.
    partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01")
    opened["partial"] = time.monotonic()
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        r = requests.get(d.url + "/healthz", timeout=5, verify=str(pki.ca))
        served_in = time.monotonic() - t0
        assert r.status_code == 200 and served_in < 1.0, (r.status_code, served_in)

        cut_after = {}
        for name, s in (("silent", silent), ("partial", partial)):
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            except socket.timeout:
                data = None
            cut_after[name] = time.monotonic() - opened[name]
            assert data == b"", (name, data, cut_after)
    finally:
        silent.close()
        partial.close()
    print(f"stalled handshakes cut after {cut_after} (header timeout {HEADER_TIMEOUT} s); "
          f"a good client was served in {served_in:.3f} s meanwhile")
    for name, t in cut_after.items():
        assert HEADER_TIMEOUT - 0.2 <= t <= HEADER_TIMEOUT + CUT_SLACK, (name, cut_after)
    wait_until(lambda: d.metric("kiroku_tls_handshake_failures_total") - before >= 2, 3, 0.1, "both cuts counted")
    failures = d.metric("kiroku_tls_handshake_failures_total") - before
    assert failures == 2, f"kiroku_tls_handshake_failures_total rose by {failures}, expected 2"


BAD_PAIRS = {
    # case: (cert, key) made from the pki, the file the message must name, a phrase of it
    "missing certificate file": (lambda p, t: (t / "absent.pem", p.one.key), "cert", "cannot read"),
    "certificate file not PEM": (lambda p, t: (write(t / "garbage.pem", "not a certificate\n"), p.one.key),
                                 "cert", "no PEM certificate"),
    "truncated certificate": (lambda p, t: (write(t / "cut.pem", p.one.cert.read_text()[:300]), p.one.key),
                              "cert", "not valid PEM"),
    "key file holds a certificate": (lambda p, t: (p.one.cert, p.two.cert), "key", "no PEM private key"),
    "key of another certificate": (lambda p, t: (p.one.cert, p.two.key), "both", "do not make a TLS server"),
}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(BAD_PAIRS))
def test_a_bad_pair_is_refused_by_serve_and_check_config(pki, tmp_path, case):
    """check-config loads the pair as serve does and exits 2 naming the
    file; serve exits non-zero with the same message and stops listening."""
    make, names, phrase = BAD_PAIRS[case]
    cert, key = make(pki, tmp_path)
    port = free_port()
    cfg = base_config(tmp_path / "data", port)
    cfg["server"].update(tls_server(cert, key))
    p = tmp_path / "k.toml"
    p.write_text(to_toml(cfg))
    named = {"cert": [cert], "key": [key], "both": [cert, key]}[names]

    r = run("check-config", p)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("invalid configuration: server.tls_cert / server.tls_key: "), r.stderr
    assert phrase in r.stderr and all(str(f) in r.stderr for f in named), (named, r.stderr)
    assert r.stdout == ""

    t0 = time.monotonic()
    r = run("serve", "--config", p, timeout=10)
    took = time.monotonic() - t0
    assert r.returncode != 0, (r.returncode, r.stderr[-2000:])
    assert took < 5, f"serve took {took:.1f} s to refuse the pair"
    assert phrase in r.stderr and all(str(f) in r.stderr for f in named), (named, r.stderr[-2000:])
    assert not listening(port)
    # Refused before it opened anything.
    assert not (tmp_path / "data" / "state.redb").exists()


@pytest.mark.parametrize("server,ok,needle", [
    ({"tls_cert": "CERT"}, False, "tls_key"),
    ({"tls_key": "KEY"}, False, "tls_cert"),
    ({"tls_cert": "CERT", "tls_key": "KEY", "public_url": "http://127.0.0.1:PORT"}, False, "server.public_url"),
    ({"tls_cert": "CERT", "tls_key": "KEY", "public_url": "https://rec.example:8443"}, True, "(TLS)"),
    ({"tls_cert": "CERT", "tls_key": "KEY", "public_url": None}, True, "(TLS)"),
    ({}, True, "(plain HTTP)"),
    ({"metrics_listen": "127.0.0.1:MPORT"}, True, "(plain HTTP)"),
    ({"metrics_listen": "127.0.0.1:PORT"}, False, "server.metrics_listen"),
    ({"metrics_listen": "metrics.example"}, False, "server.metrics_listen"),
], ids=["cert-without-key", "key-without-cert", "tls-with-http-public-url", "tls-with-https-public-url",
        "tls-default-public-url", "plain", "metrics-listen", "metrics-listen-is-listen", "metrics-listen-not-addr"])
def test_tls_and_metrics_listen_configuration_rules(pki, tmp_path, server, ok, needle):
    """The two files go together, a TLS listener's public URL is https://,
    metrics_listen is an address other than listen; check-config says which
    listener kind a valid file configures."""
    port, mport = free_port(), free_port()
    subst = {"CERT": str(pki.one.cert), "KEY": str(pki.one.key)}
    server = {k: (None if v is None else subst.get(v, v.replace("MPORT", str(mport)).replace("PORT", str(port))))
              for k, v in server.items()}
    cfg = base_config(tmp_path / "data", port)
    cfg["server"].update(server)
    p = tmp_path / "k.toml"
    p.write_text(to_toml(cfg))
    r = run("check-config", p)
    if ok:
        assert r.returncode == 0, (r.returncode, r.stderr)
        assert f"listen 127.0.0.1:{port} {needle}" in r.stdout, r.stdout
    else:
        assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
        assert needle in r.stderr, r.stderr


def test_sighup_without_tls_is_logged_and_ignored(kiroku):
    """Without TLS there is nothing to reload: SIGHUP (sent by careless
    `kill -HUP` or a log rotator) must not end the daemon and its
    recordings, as the signal's default action would."""
    d = kiroku("hup_plain", log={"format": "json", "level": "info"})
    api = d.sdk()
    for n in (1, 2):
        os.kill(d.proc.pid, signal.SIGHUP)

        def logged() -> bool:
            assert d.running, f"kiroku exited with {d.proc.returncode} on SIGHUP #{n}"
            return len([r for r in log_messages(d, "INFO") if "SIGHUP received" in r["fields"].get("message", "")]) >= n

        wait_until(logged, 5, 0.05, f"SIGHUP #{n} logged")
        time.sleep(0.2)
        assert d.running, f"kiroku exited with {d.proc.returncode} after SIGHUP #{n}"
        assert requests.get(d.url + "/healthz", timeout=5).text.strip() == "ok"
        err = api.error("DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "nosuchtask"})
        assert err.code == "FailedOperation.TaskNotExist", (err.code, err.message)
    said = [r["fields"]["message"] for r in log_messages(d) if "SIGHUP" in r["fields"].get("message", "")]
    assert said == ["SIGHUP received: nothing to reload (no server.tls_cert)"] * 2, said
    assert "kiroku_tls_reloads_total" not in d.metrics_text()


PROM_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
                         r'(?P<labels>\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                         r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*,?\})? '
                         r'(?P<value>\S+)(?: -?[0-9]+)?$')
PROM_META = re.compile(r'^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*)(?: (.*))?$')


def check_exposition(text: str) -> int:
    """The Prometheus text format (0.0.4), checked line by line: every
    sample parses (name, labels, a float value), its family has a `# TYPE`
    of a known type before it, and it appears once. Also checked with
    promtool or prometheus_client where present. Returns the number of
    samples."""
    types: dict[str, str] = {}
    seen: set[str] = set()
    samples = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        if line.startswith("#"):
            m = PROM_META.match(line)
            if m and m.group(1) == "TYPE":
                assert m.group(3) in ("counter", "gauge", "histogram", "summary", "untyped"), (n, line)
                assert m.group(2) not in types, f"line {n}: a second TYPE for {m.group(2)}"
                types[m.group(2)] = m.group(3)
            continue
        m = PROM_SAMPLE.match(line)
        assert m, f"line {n} is not a sample: {line!r}"
        float(m.group("value"))  # NaN, +Inf, -Inf and numbers parse; anything else raises
        name = m.group("name")
        family = next((name[:-len(sfx)] for sfx in ("_bucket", "_sum", "_count")
                       if name.endswith(sfx) and name[:-len(sfx)] in types), name)
        assert family in types, f"line {n}: {name} has no # TYPE before it"
        key = name + (m.group("labels") or "")
        assert key not in seen, f"line {n}: {key} twice"
        seen.add(key)
        samples += 1
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        pass
    else:
        assert sum(len(f.samples) for f in text_string_to_metric_families(text)) == samples
    return samples


def test_metrics_listen_serves_metrics_and_healthz_apart(kiroku):
    """With server.metrics_listen, /metrics moves to that plain listener
    (which serves nothing but /metrics and /healthz); the main listener
    answers 404 for /metrics and keeps /healthz."""
    mport = free_port()
    d = kiroku("metrics_apart", server={"metrics_listen": f"127.0.0.1:{mport}"})
    metrics_url = f"http://127.0.0.1:{mport}"

    main = requests.get(d.url + "/metrics", timeout=5)
    assert main.status_code == 404 and "kiroku_" not in main.text, (main.status_code, main.text[:300])
    for base in (d.url, metrics_url):
        r = requests.get(base + "/healthz", timeout=5)
        assert r.status_code == 200 and r.text.strip() == "ok", (base, r.status_code, r.text)

    before = metric_baseline(requests.get(metrics_url + "/metrics", timeout=5).text, "kiroku_api_requests_total")
    err = d.sdk().error("DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "nosuchtask"})
    assert err.code == "FailedOperation.TaskNotExist"
    r = requests.get(metrics_url + "/metrics", timeout=5)
    assert r.status_code == 200, r.status_code
    assert r.headers["Content-Type"].startswith("text/plain") and "version=0.0.4" in r.headers["Content-Type"], \
        r.headers
    n = check_exposition(r.text)
    assert n > 20, n
    # The API request on the main listener is counted on the metrics one.
    assert metric_value(r.text, "kiroku_api_requests_total") - before == 1, metric_samples(
        r.text, "kiroku_api_requests_total")

    # Nothing else is served there: no API, no WHIP, no operator endpoints.
    body = b'{"SdkAppId": 1400000001, "TaskId": "nosuchtask"}'
    h = signed_headers(f"127.0.0.1:{mport}", "DescribeCloudRecording", body)
    assert requests.post(metrics_url + "/", data=body, headers=h, timeout=5).status_code == 404
    assert requests.get(metrics_url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5).status_code == 404
    assert requests.post(metrics_url + f"/whip/{APP_ID}/1/u", data=b"v=0\r\n",
                         headers={"Content-Type": "application/sdp"}, timeout=5).status_code == 404
