"""Hostile clients against the real daemon (docs/security.md): who may read
the operator endpoints and who may end a publisher's session."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import select
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from kiroku_e2e import (ADMIN_HEADERS, ADMIN_TOKEN, API_VERSION, APP_ID, KIROKU_BIN, SECRET_ID, SECRET_KEY, metric_samples,
                        signed_headers, wait_until)
from test_whip import post_offer

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_operator_endpoints_need_the_admin_token(kiroku):
    """/v1/* answers only `Authorization: Bearer <server.admin_token>`; a box
    with API credentials and no admin token keeps them shut (403); an open
    dev-mode box on loopback answers, as the README's first steps show."""
    d = kiroku("op")
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                    {"Authorization": ADMIN_TOKEN}, {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        r = requests.get(d.url + "/v1/rooms", headers=headers, timeout=5)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer"), r.headers
        assert "admin_token" in r.json()["error"]
        assert "rooms" not in r.text
    r = requests.delete(d.url + "/v1/sessions/anything", timeout=5)
    assert r.status_code == 401
    r = requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 200 and r.json() == {"rooms": [], "sessions": 0}

    cfg = kiroku.config("no_token")
    del cfg["server"]["admin_token"]
    shut = kiroku("no_token", config=cfg)
    r = requests.get(shut.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 403 and "set server.admin_token" in r.json()["error"], r.text

    dev_cfg = kiroku.config("dev", dev_mode=True)
    del dev_cfg["server"]["admin_token"]
    dev = kiroku("dev", config=dev_cfg)
    assert requests.get(dev.url + "/v1/rooms", timeout=5).status_code == 200
    # ... but only to requests addressed to loopback: a web page that DNS
    # rebinds its own name to 127.0.0.1 sends that name as Host.
    for path in ("/v1/rooms", "/"):
        r = requests.post(dev.url + path, headers={"Host": f"rebind.example:{dev.port}"}, data=b"{}", timeout=5)
        assert r.status_code == 421 and "loopback" in r.text, (path, r.status_code, r.text)
    assert requests.get(dev.url + "/v1/rooms", headers={"Host": f"localhost:{dev.port}"},
                        timeout=5).status_code == 200


def test_only_the_resource_url_or_the_operator_ends_a_session(kiroku):
    """A session's WHIP resource URL is a secret apart from its session id:
    the id (in logs and the operator's status) cannot end the session, the
    resource URL is never logged, and the operator ends any session by id."""
    d = kiroku("kick")
    posted = {}
    for user in ("victim", "other"):
        r = post_offer(d, 8801, user)
        assert r.status_code == 201, r.text
        posted[user] = r.headers["Location"]
    log = ANSI.sub("", d.log_text())
    ids = {user: sid for sid, user in re.findall(r'WHIP session created session_id=(\S+) .*?user_id="?([^"\s]+)', log)}
    assert set(ids) == {"victim", "other"}, log
    for user, location in posted.items():
        token = location.rsplit("/", 1)[1]
        assert len(token) >= 32 and token != ids[user]
        assert token not in log, "the resource token was logged"

    # The session id alone (what logs and GET /v1/rooms show) ends nothing.
    for path in (f"/whip/session/{ids['victim']}", "/whip/session/" + "A" * 32):
        r = requests.delete(d.url + path, timeout=5)
        assert r.status_code == 404, (path, r.status_code)
        assert ids["victim"] not in r.text
    assert requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5).json()["sessions"] == 2

    # The holder of the resource URL ends its own session.
    assert requests.delete(d.url + posted["victim"], timeout=5).status_code == 200
    assert requests.delete(d.url + posted["victim"], timeout=5).status_code == 404
    # The operator ends another by id; without the token it cannot.
    assert requests.delete(f"{d.url}/v1/sessions/{ids['other']}", timeout=5).status_code == 401
    r = requests.delete(f"{d.url}/v1/sessions/{ids['other']}", headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 204, r.text
    assert requests.delete(f"{d.url}/v1/sessions/{ids['other']}", headers=ADMIN_HEADERS,
                           timeout=5).status_code == 404
    wait_until(lambda: requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5).json()["sessions"] == 0,
               5, 0.1, "both sessions gone")
    assert requests.delete(d.url + posted["other"], timeout=5).status_code == 404
    assert "WHIP session ended by the operator" in ANSI.sub("", d.log_text())



def test_state_spool_and_targets_are_private_whatever_the_umask(kiroku):
    """Started with umask 000, kiroku still keeps what holds customer keys
    and unpublished media to itself: state.redb 0600 (with the upload
    targets), spool/ 0700 (docs/security.md, "What is kept at rest")."""
    old = os.umask(0)
    try:
        d = kiroku("umask0")
    finally:
        os.umask(old)
    data = Path(d.config["data_dir"])

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(data / "state.redb") == 0o600, oct(mode(data / "state.redb"))
    assert mode(data / "spool") == 0o700, oct(mode(data / "spool"))


def _slow_client(port: int) -> socket.socket:
    """A slowloris: connects and sends half a request's headers, then waits."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST / HTTP/1.1\r\nHost: kiroku\r\nContent-Type: application/json\r\n")
    return s


def _closed(s: socket.socket, within: float) -> bool:
    """Whether the server closed `s` (EOF or reset) within `within` s."""
    s.settimeout(within)
    try:
        return s.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def _metric_from_elsewhere(d, name: str, labels: dict | None = None) -> float:
    """A metric read from 127.0.0.2 (127.0.0.1 is at its connection cap)."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5, source_address=("127.0.0.2", 0))
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = [v for lbl, v in metric_samples(text, name) if all(lbl.get(k) == x for k, x in (labels or {}).items())]
    assert values, f"{name} {labels} is not exported"
    return sum(values)


def test_slow_and_flooding_clients_are_bounded(kiroku):
    """300 half-sent requests from one address: beyond the per-address cap
    they are closed at once (counted), the rest are cut at the header
    timeout, and meanwhile a client at another address gets its signed
    API answer within 2 s. A body sent too slowly is cut as well."""
    d = kiroku("edge", server={"max_connections_per_address": 50, "header_timeout_seconds": 5,
                               "body_timeout_seconds": 3})
    started = time.monotonic()
    slow = [_slow_client(d.port) for _ in range(300)]
    # The suite's own keep-alive connections from 127.0.0.1 (the start-up
    # probe) may hold a place or two of the 50.
    # Refused ones are closed at once: after half a second each has its EOF
    # waiting, while the held ones (cut only at the header timeout) have
    # nothing to read. One select over all of them, so that checking does
    # not itself take seconds.
    time.sleep(0.5)
    readable = set(select.select(slow, [], [], 0)[0])
    closed_at_once = [s in readable and _closed(s, 0.5) for s in slow]
    refused = sum(closed_at_once)
    assert 250 <= refused <= 252, f"{refused} closed at once; 250 were over the cap"
    assert not any(closed_at_once[:48]), "a connection within the cap was closed"
    assert _metric_from_elsewhere(d, "kiroku_http_connections_refused_total", {"reason": "per_address"}) == refused

    body = json.dumps({"SdkAppId": APP_ID, "TaskId": "0" * 32}).encode()
    headers = signed_headers(d.host, "DescribeCloudRecording", body, int(time.time()), SECRET_ID, SECRET_KEY,
                             "application/json", API_VERSION)
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5, source_address=("127.0.0.2", 0))
    conn.request("POST", "/", body=body, headers=headers)
    answer = json.loads(conn.getresponse().read())
    conn.close()
    assert time.monotonic() - t0 < 2.0
    assert answer["Response"]["Error"]["Code"] == "InvalidParameter.TaskId" or "RequestId" in answer["Response"]

    # The held ones are cut at the header timeout (5 s), well within 30 s.
    held = [s for s, gone in zip(slow, closed_at_once) if not gone]
    assert all(_closed(s, max(0.1, started + 30 - time.monotonic())) for s in held)
    cut_after = time.monotonic() - started
    assert cut_after < 30, cut_after
    for s in slow:
        s.close()
    # Released: what stays open is this scrape and the suite's own
    # keep-alive connections (at most two).
    wait_until(lambda: _metric_from_elsewhere(d, "kiroku_http_connections") <= 3, 5, 0.1, "connections released")

    # A body that trickles: its headers arrive, its body never completes.
    s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    s.sendall(b"POST / HTTP/1.1\r\nHost: kiroku\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    t0 = time.monotonic()
    s.settimeout(10)
    reply = b""
    try:
        while chunk := s.recv(4096):
            reply += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    assert time.monotonic() - t0 < 8, "the trickling body was not cut"
    print(f"slowloris: {refused} refused at once, {len(held)} cut after {cut_after:.1f} s; trickling body answered {reply[:60]!r}")


def _raw_exchange(port: int, head: bytes, body: bytes = b"", wait: float = 5) -> tuple[bytes, float]:
    """Sends `head` + `body` and reads until the server answers and closes
    (or `wait` passes); the reply and how long it took."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    t0 = time.monotonic()
    s.sendall(head + body)
    reply = b""
    try:
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}") and b"application/json" in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
            if b"\r\n\r\n" in reply and b"application/json" not in reply.split(b"\r\n\r\n")[0]:
                break
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return reply, time.monotonic() - t0


def test_huge_bodies_are_refused_before_they_are_read(kiroku):
    """A 100 MB body declared by Content-Length is refused at once, before
    any of it is sent (the API with RequestSizeLimitExceeded, WHIP with
    413); a chunked body with no length is cut at the limit."""
    d = kiroku("bodies")
    api_head = (f"POST / HTTP/1.1\r\nHost: {d.host}\r\nContent-Type: application/json\r\n"
                f"X-TC-Action: DescribeCloudRecording\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n").encode()
    reply, took = _raw_exchange(d.port, api_head)
    assert b"RequestSizeLimitExceeded" in reply, reply[:400]
    assert took < 2, took

    whip_head = (f"POST /whip/{APP_ID}/8820/huge HTTP/1.1\r\nHost: {d.host}\r\nContent-Type: application/sdp\r\n"
                 f"Content-Length: {100 * 1024 * 1024}\r\n\r\n").encode()
    reply, took = _raw_exchange(d.port, whip_head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert took < 2, took

    # Chunked, no length: read up to server.max_body_bytes (1 MiB here), then refused.
    chunk = b"x" * 65536
    chunked = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(24))
    head = (f"POST / HTTP/1.1\r\nHost: {d.host}\r\nContent-Type: application/json\r\n"
            f"X-TC-Action: DescribeCloudRecording\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    reply, _ = _raw_exchange(d.port, head, chunked)
    assert b"RequestSizeLimitExceeded" in reply, reply[:400]


class _CountingImages:
    """An HTTP server on `host` counting requests; `/to/<url>` redirects."""

    def __init__(self, host: str):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                if self.path.startswith("/to/"):
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/to/"):])
                    self.end_headers()
                    return
                self.send_response(404)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_image_urls_to_internal_addresses_are_never_fetched(kiroku):
    """Watermark URLs naming loopback (literally, by a host name that
    resolves there) or redirecting there are refused: the internal server is
    never contacted and each URL raises callback 309 with the reason. Only
    127.0.0.3 is allowed here (fetch.allow), so `localhost` (127.0.0.1, ::1)
    is refused by the resolver and the redirect to 127.0.0.2 at its hop."""
    from kiroku_e2e import CallbackReceiver
    from test_mixed import mixed_params

    receiver = CallbackReceiver().start()
    internal = _CountingImages("127.0.0.2")
    allowed = _CountingImages("127.0.0.3")
    try:
        cfg = kiroku.config("ssrf", callback_url=receiver.url)
        cfg["fetch"] = {"allow": ["127.0.0.3/32"]}
        d = kiroku("ssrf", config=cfg)
        port = internal.server.server_address[1]
        urls = {
            "literal": f"{internal.url}/a.png",
            "by name": f"http://localhost:{port}/b.png",
            "metadata": "http://169.254.169.254/latest/meta-data/x.png",
            "redirect": f"{allowed.url}/to/{internal.url}/c.png",
        }
        marks = [{"WaterMarkType": 0, "WaterMarkImage": {"WaterMarkUrl": u, "Top": 0, "Left": 0,
                                                          "Width": 16, "Height": 16}} for u in urls.values()]
        task_id = d.sdk().create(mixed_params(8830, {"MixLayoutMode": 3, "WaterMarkList": marks}))
        wait_until(lambda: len([c for c in receiver.delivered(task_id) if c.event_type == 309]) == len(urls),
                   20, 0.1, "a 309 for every refused image")
        reasons = {c.payload["Url"]: c.payload["Reason"] for c in receiver.delivered(task_id) if c.event_type == 309}
        assert set(reasons) == set(urls.values()), reasons
        assert "127.0.0.2 is loopback" in reasons[urls["literal"]], reasons
        # 127.0.0.1 is also the box's own listener, which the reason names.
        by_name = reasons[urls["by name"]]
        assert "localhost refused" in by_name and ("loopback" in by_name or "listens on" in by_name), reasons
        assert "link-local" in reasons[urls["metadata"]], reasons
        assert "redirect refused" in reasons[urls["redirect"]] and "127.0.0.2" in reasons[urls["redirect"]], reasons
        assert internal.hits == [], internal.hits
        assert allowed.hits == [f"/to/{internal.url}/c.png"], allowed.hits
        d.sdk().delete(task_id)
    finally:
        internal.close()
        allowed.close()
        receiver.stop()


def test_credentials_bound_to_apps_and_per_app_quotas(kiroku):
    """A key bound to app A cannot act for app B (not even Describe); app B's
    task quota stops B alone while A keeps creating."""
    from kiroku_e2e import APP_ID2, create_params

    other_id, other_key = "AKIDtenantBkeyForE2E00001", "tenant-b-secret-key-0002"
    cfg = kiroku.config("tenants")
    cfg["credentials"] = [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY, "apps": [APP_ID]},
                          {"secret_id": other_id, "secret_key": other_key, "apps": [APP_ID2]}]
    for app in cfg["apps"]:
        if app["sdk_app_id"] == APP_ID2:
            app["max_tasks"] = 1
    d = kiroku("tenants", config=cfg)
    a, b = d.sdk(), d.sdk(secret_id=other_id, secret_key=other_key)

    b_task = b.create(create_params(app=APP_ID2, room="8840"))
    e = a.error("CreateCloudRecording", create_params(app=APP_ID2, room="8841"))
    assert e.code == "AuthFailure.UnauthorizedOperation", e
    assert str(APP_ID2) in e.message and "credentials.apps" in e.message, e.message
    e = a.error("DescribeCloudRecording", {"SdkAppId": APP_ID2, "TaskId": b_task})
    assert e.code == "AuthFailure.UnauthorizedOperation", e
    e = a.error("DeleteCloudRecording", {"SdkAppId": APP_ID2, "TaskId": b_task})
    assert e.code == "AuthFailure.UnauthorizedOperation", e
    assert b.describe(b_task, app=APP_ID2)["TaskId"] == b_task

    # B is at its quota of 1; A is not limited by it.
    e = b.error("CreateCloudRecording", create_params(app=APP_ID2, room="8842"))
    assert e.code == "FailedOperation.RestrictedConcurrency", e
    assert "apps.max_tasks = 1" in e.message, e.message
    a_task = a.create(create_params(app=APP_ID, room="8843"))
    assert d.metric("kiroku_tasks_refused_total", {"reason": "app_max_tasks"}) == 1
    a.delete(a_task)
    b.delete(b_task, app=APP_ID2)


class _CapturingProxy:
    """A TCP relay in front of the daemon that keeps every byte clients
    send: what an eavesdropper on a plain-HTTP network sees."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.sent: list[bytearray] = []  # per connection, as it arrives
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        captured = bytearray()
        self.sent.append(captured)
        pair = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(pair, [], [], 10)
                if not readable:
                    return
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is client:
                        captured += data
                        upstream.sendall(data)
                    else:
                        client.sendall(data)
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.listener.close()


def _replay(port: int, request: bytes, source: str, action: str | None = None) -> dict:
    """Sends captured request bytes again from `source`, with X-TC-Action
    swapped when `action` is given; the JSON answer."""
    if action is not None:
        request = re.sub(rb"(?im)^X-TC-Action: *[A-Za-z]+", f"X-TC-Action: {action}".encode(), request)
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = dict(line.split(": ", 1) for line in lines[1:])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders(body)
    answer = json.loads(conn.getresponse().read())
    conn.close()
    return answer


def test_a_captured_signature_is_refused_for_another_action(kiroku):
    """Tencent's SDK signs the body and Host but not X-TC-Action: a signed
    Describe captured on the wire carries the same body a Delete of the
    task would. Resent from another address as a Delete it is refused and
    the task lives on; resent as the same Describe it is answered (the SDK
    itself repeats identical requests within a second)."""
    from tencentcloud.common import credential
    from tencentcloud.trtc.v20190722 import models, trtc_client
    from kiroku_e2e import create_params, sdk_profile

    d = kiroku("replay")
    api = d.sdk()
    task = api.create(create_params(room="7101"))
    proxy = _CapturingProxy(d.port)
    try:
        client = trtc_client.TrtcClient(credential.Credential(SECRET_ID, SECRET_KEY), "ap-shanghai",
                                        sdk_profile(proxy.port))
        req = models.DescribeCloudRecordingRequest()
        req.from_json_string(json.dumps({"SdkAppId": APP_ID, "TaskId": task}))
        assert client.DescribeCloudRecording(req).TaskId == task
    finally:
        proxy.close()
    assert len(proxy.sent) == 1
    captured = bytes(proxy.sent[0])
    assert b"X-TC-Action: DescribeCloudRecording" in captured, captured[:400]

    # The same Describe again, from elsewhere: answered.
    again = _replay(d.port, captured, "127.0.0.2")["Response"]
    assert again.get("TaskId") == task, again
    # As a Delete, from elsewhere: refused, and the task is still there.
    forged = _replay(d.port, captured, "127.0.0.3", "DeleteCloudRecording")["Response"]
    assert forged["Error"]["Code"] == "AuthFailure.SignatureFailure", forged
    assert "replayed for another action" in forged["Error"]["Message"], forged
    assert api.describe(task)["Status"] in ("Idle", "InProgress"), "the forged Delete stopped the task"
    assert _metric_from_elsewhere(d, "kiroku_api_replays_refused_total") == 1
    # A correctly signed Delete of its own ends the task.
    api.delete(task)
    api.wait_gone(task)


def _key_file(path: Path, mode: int = 0o600) -> Path:
    import base64
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(mode)
    return path


def test_customer_keys_and_user_sigs_are_sealed_at_rest_and_keys_rotate(kiroku, tmp_path):
    """With [secrets] key_file, state.redb (task records and upload targets)
    holds no customer's S3 secret key or the bot's UserSig in any form a copy of the
    disk would show. A rotated key (the old one in previous_key_files)
    opens what was sealed and the daemon seals it anew at start, after
    which the old key can go; with no key, or the wrong one, the daemon
    refuses to start and says which key is missing."""
    from kiroku_e2e import create_params, to_toml

    key1 = _key_file(tmp_path / "k1.key")
    secret_key, user_sig = "s3-secret-Zq81mXv0pLk27", "bot-usersig-Yw55nQ1rTe93"
    cfg = kiroku.config("sealed", secrets={"key_file": str(key1)},
                        storage={"s3": {"aws_endpoint": "http://127.0.0.1:9", "allow_http": True,
                                        "path_style": True}})
    d = kiroku("sealed", config=cfg)
    api = d.sdk()
    params = create_params(room="7201")
    params["UserSig"] = user_sig
    params["StorageParams"] = {"CloudStorage": {"Vendor": 1, "Region": "us-east-1", "Bucket": "rec",
                                                "AccessKey": "AKIDsealed", "SecretKey": secret_key,
                                                "FileNamePrefix": ["p"]}}
    task = api.create(params)
    data = Path(d.config["data_dir"])
    wait_until(lambda: d.metric("kiroku_upload_targets") == 1, 5, 0.05,
               "the task's upload target")

    def exposed() -> list[str]:
        found = []
        for f in [data / "state.redb"]:
            raw = f.read_bytes()
            for s in (secret_key, user_sig):
                if s.encode() in raw:
                    found.append(f"{f.name}: {s}")
        return found

    assert exposed() == []

    # Rotation: a new key, the old one kept for opening.
    key2 = _key_file(tmp_path / "k2.key")
    d.stop()
    d.config["secrets"] = {"key_file": str(key2), "previous_key_files": [str(key1)]}
    d.config_path.write_text(to_toml(d.config))
    d.start()
    assert api.describe(task)["TaskId"] == task
    assert exposed() == []
    # The old key is no longer needed: the task record and the upload target
    # (its files still wait for the unreachable bucket) were sealed anew; a
    # target left under the old key would stop the start ("key id").
    d.stop()
    d.config["secrets"] = {"key_file": str(key2)}
    d.config_path.write_text(to_toml(d.config))
    d.start()
    assert api.describe(task)["TaskId"] == task
    assert d.metric("kiroku_upload_targets") == 1

    # Without the key (or with only the old one) the daemon will not start.
    d.stop()
    for secrets, needle in (({}, "key_file"), ({"key_file": str(key1)}, "key id")):
        d.config["secrets"] = secrets
        d.config_path.write_text(to_toml(d.config))
        with pytest.raises(AssertionError) as failed:
            d.start(timeout=10)
        assert needle in str(failed.value), str(failed.value)[-2000:]

    # A key file others can read is refused by check-config and serve.
    loose = _key_file(tmp_path / "loose.key", 0o644)
    d.config["secrets"] = {"key_file": str(loose)}
    d.config_path.write_text(to_toml(d.config))
    r = subprocess.run([KIROKU_BIN, "check-config", str(d.config_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "chmod 600" in r.stderr, (r.returncode, r.stderr)
    # Put back a working key so that the fixture's teardown finds a sane box.
    d.config["secrets"] = {"key_file": str(key2)}
    d.config_path.write_text(to_toml(d.config))
    d.start()
