"""Helpers shared by the kiroku end-to-end tests.

Everything here talks to a real `kiroku serve` process over HTTP: the
Tencent Cloud Python SDK for the happy paths, and a small TC3-HMAC-SHA256
signer of our own for requests the SDK cannot send (unknown fields,
expired timestamps, garbage). Nothing here imports daemon code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import requests
from tencentcloud.common import credential
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.trtc.v20190722 import models, trtc_client

REPO = Path(__file__).resolve().parents[2]
KIROKU_BIN = os.environ.get("KIROKU_BIN") or str(REPO / "target" / "debug" / "kiroku")

SECRET_ID = "AKIDkirokuE2EtestSecretId0001"
SECRET_KEY = "e2e-secret-key-0001"
APP_ID = 1400000001  # callbacks (when a receiver is given), any UserSig
APP_ID2 = 1400000002  # a second app, no callbacks, any UserSig
APP_SIG = 1400000003  # UserSig must verify with USER_SIG_KEY
USER_SIG_KEY = "e2e-user-sig-key-5b1f"
CALLBACK_KEY = "e2e-callback-key-77c2"
# server.admin_token: the operator credential for /v1/* (docs/security.md).
ADMIN_TOKEN = "e2e-admin-token-3f9a51c0"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Third-party publisher scripts (tests/e2e/whip_clients) read it to check
# GET /v1/rooms; they inherit the environment.
os.environ.setdefault("KIROKU_ADMIN_TOKEN", ADMIN_TOKEN)
API_VERSION = "2019-07-22"

# Every daemon started by the suite, so that a failing test can show logs.
ACTIVE_DAEMONS: list["Daemon"] = []


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


# "No default given" for metric reads (None or 0 would be a real default).
NO_DEFAULT: Any = _NoDefault()

_uniq_lock = threading.Lock()
_uniq_n = 0


def uniq(prefix: str = "bot") -> str:
    """A short unique TRTC-valid id (A-Za-z0-9_-, <= 32 chars)."""
    global _uniq_n
    with _uniq_lock:
        _uniq_n += 1
        n = _uniq_n
    return f"{prefix}_{os.getpid() % 10000}_{n}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Polls `pred` until it returns something truthy; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: dict) -> str:
    """Writes the small subset of TOML kiroku's config uses."""
    lines: list[str] = []
    for k, v in cfg.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not (v and isinstance(v[0], dict))):
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
    for k, v in cfg.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            for kk, vv in v.items():
                if vv is not None:
                    lines.append(f"{kk} = {_toml_value(vv)}")
    for k, v in cfg.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"\n[[{k}]]")
                for kk, vv in item.items():
                    if vv is not None:
                        lines.append(f"{kk} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


def base_config(data_dir: Path, port: int, callback_url: str | None = None, dev_mode: bool = False) -> dict:
    """The suite's default: authenticated, three apps, generous limits."""
    app1: dict[str, Any] = {"sdk_app_id": APP_ID}
    if callback_url:
        app1.update(callback_url=callback_url, callback_key=CALLBACK_KEY)
    cfg: dict[str, Any] = {
        "data_dir": str(data_dir),
        "server": {
            "listen": f"127.0.0.1:{port}",
            "public_url": f"http://127.0.0.1:{port}",
            "max_body_bytes": 1048576,
            "shutdown_grace_seconds": 5,
            "admin_token": ADMIN_TOKEN,
        },
        "limits": {"max_tasks": 1000, "api_rate_per_second": 1000},
        "callbacks": {"retry_for_seconds": 3600, "timeout_seconds": 2, "max_in_flight": 16},
        "log": {"level": "info", "format": "text"},
        "credentials": [] if dev_mode else [{"secret_id": SECRET_ID, "secret_key": SECRET_KEY}],
        "apps": [
            app1,
            {"sdk_app_id": APP_ID2},
            {"sdk_app_id": APP_SIG, "user_sig_key": USER_SIG_KEY},
        ],
    }
    # WebRTC ingest is always built in and binds a UDP socket (default
    # <listen ip>:8443): every daemon of the suite gets its own free port.
    cfg["ingest"] = {"udp_listen": f"127.0.0.1:{free_udp_port()}"}
    # The suite serves layout images from loopback, which kiroku refuses
    # unless allowed (docs/security.md, "Outbound fetches").
    cfg["fetch"] = {"allow": ["127.0.0.0/8"]}
    return cfg


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------
# The daemon process
# --------------------------------------------------------------------------

class Daemon:
    """One `kiroku serve` process on a config file in its own directory.

    `start()` / `stop()` / `kill()` may be called repeatedly: a restart keeps
    the config file, the port and `data_dir`.

    With `server.tls_cert` in the config the listener speaks TLS: `url` is
    https://, and the suite's own clients (the readiness check, `metrics_text`,
    `sdk()`, `raw()`) verify its certificate against `ca`, the CA file that
    signed it.
    """

    def __init__(self, workdir: Path, config: dict, name: str = "kiroku", env: dict | None = None,
                 ca: str | Path | None = None, wrapper: list[str] | None = None):
        self.workdir = Path(workdir)
        # Arguments in front of `kiroku serve ...` (a program that sets
        # something up and execs the rest, so the pid stays the daemon's).
        self.wrapper = list(wrapper or [])
        self.ca = str(ca) if ca is not None else None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.config = config
        self.port = int(config["server"]["listen"].rsplit(":", 1)[1])
        self.config_path = self.workdir / f"{name}.toml"
        self.config_path.write_text(to_toml(config))
        self.log_path = self.workdir / f"{name}.log"
        self.extra_env = env or {}
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        # A test that makes a thread panic on purpose (KIROKU_TEST_FAULTS)
        # sets this; the teardown then does not count "panicked" in the log.
        self.expect_panics = False

    # -- process control --------------------------------------------------
    @property
    def tls(self) -> bool:
        return bool(self.config["server"].get("tls_cert"))

    @property
    def verify(self) -> str | bool:
        """`requests`' verify= for this daemon: its CA file, else the default."""
        return self.ca if self.ca is not None else True

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Where /metrics is served: `server.metrics_listen` (plain HTTP) when set."""
        separate = self.config["server"].get("metrics_listen")
        return f"http://{separate}" if separate else self.url

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "KIROKU_LOG", "LISTEN_FDS", "LISTEN_PID")}
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True, timeout: float = 10.0) -> "Daemon":
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        if not Path(KIROKU_BIN).exists():
            # Someone may be relinking the binary right now: wait a little.
            wait_until(lambda: Path(KIROKU_BIN).exists(), 60, 0.5, f"the kiroku binary at {KIROKU_BIN}")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts} at {time.time():.3f} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*self.wrapper, KIROKU_BIN, "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self._env(),
                # A wrapper that does not exec (heaptrack is a shell script)
                # would take a signal and leave the daemon running: with a
                # wrapper, signals go to the whole process group.
                start_new_session=bool(self.wrapper),
            )
        if self not in ACTIVE_DAEMONS:
            ACTIVE_DAEMONS.append(self)
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            rc = self.proc.poll() if self.proc else None
            if rc is not None:
                raise AssertionError(f"kiroku exited with {rc} before answering /healthz\n{self.log_tail()}")
            try:
                r = requests.get(self.url + "/healthz", timeout=1, verify=self.verify)
                if r.status_code == 200 and r.text.strip() == "ok":
                    return
                last = (r.status_code, r.text[:200])
            except requests.RequestException as e:
                last = e
            if time.monotonic() >= deadline:
                raise AssertionError(f"kiroku did not answer {self.url}/healthz within {timeout} s "
                                     f"(last: {last!r})\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then waits; returns the exit status (kills on timeout)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(5)
                raise AssertionError(f"kiroku did not exit within {timeout} s of SIGTERM\n{self.log_tail()}")
            self._wait_group_gone(timeout)
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "daemon is not running"
        self._signal(signal.SIGKILL)
        self.proc.wait(10)

    def _wait_group_gone(self, timeout: float) -> None:
        """A wrapper that does not exec may exit before the daemon it
        started has finished shutting down: wait for the whole group."""
        if not self.wrapper or self.proc is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() >= deadline:
                os.killpg(self.proc.pid, signal.SIGKILL)
                raise AssertionError(f"a wrapped kiroku outlived its wrapper by {timeout} s\n{self.log_tail()}")
            time.sleep(0.05)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.wrapper:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        else:
            self.proc.send_signal(sig)

    def restart(self, wait: bool = True) -> "Daemon":
        if self.running:
            rc = self.stop()
            assert rc == 0, f"kiroku exited with {rc} on SIGTERM\n{self.log_tail()}"
        return self.start(wait=wait)

    # -- observation -----------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_text().splitlines()
        return f"--- {self.log_path} (last {lines} lines) ---\n" + "\n".join(text[-lines:])

    def metrics_text(self) -> str:
        r = requests.get(self.metrics_url + "/metrics", timeout=5, verify=self.verify)
        assert r.status_code == 200, (self.metrics_url, r.status_code, r.text[:300])
        return r.text

    def metric(self, name: str, labels: dict | None = None, *, default: Any = NO_DEFAULT) -> float:
        """Sum of the samples of `name` whose labels include `labels`; see
        `metric_value` (raises when the metric is absent unless `default`)."""
        return metric_value(self.metrics_text(), name, labels, default=default)

    def metric_baseline(self, name: str, labels: dict | None = None) -> float:
        """A counter's value before the event a test provokes; see `metric_baseline`."""
        return metric_baseline(self.metrics_text(), name, labels)

    # -- clients ---------------------------------------------------------------
    def sdk(self, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY) -> "Api":
        return Api(self, secret_id, secret_key)

    def raw(self, action: str | None, body: bytes | str | dict, **kw) -> "RawResponse":
        return raw_request(self, action, body, **kw)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(?:\s+-?\d+)?$')
_META = re.compile(r'^#\s+(?:HELP|TYPE)\s+([a-zA-Z_:][a-zA-Z0-9_:]*)')
# Sample-name suffixes of a histogram / summary family.
_FAMILY_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_samples(text: str, name: str) -> list[tuple[dict, float]]:
    """Every sample of `name` in a Prometheus text exposition: (labels, value)."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m or m.group(1) != name:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((labels, float(m.group(3))))
    return out


def metric_declared(text: str, name: str) -> bool:
    """Whether the exposition has `# HELP`/`# TYPE` for `name` (or for the
    histogram/summary family that `name` is a `_bucket`/`_sum`/`_count` of)."""
    families = {m.group(1) for m in map(_META.match, text.splitlines()) if m}
    if name in families:
        return True
    return any(name.endswith(sfx) and name[: -len(sfx)] in families for sfx in _FAMILY_SUFFIXES)


def _metric_names(text: str) -> list[str]:
    return sorted({m.group(1) for m in map(_META.match, text.splitlines()) if m})


def metric_value(text: str, name: str, labels: dict | None = None, *, default: Any = NO_DEFAULT) -> float:
    """Sum of the samples of `name` whose labels include `labels`.

    Never reads a missing metric as 0 by itself (a renamed metric must not
    make `== 0` pass):
    - the family is not in the exposition at all (no HELP/TYPE, no sample):
      AssertionError naming it, whatever `default` says;
    - samples exist but none carries one of the label *names* asked for (a
      renamed label): AssertionError, whatever `default` says;
    - the family is there but no sample has these label *values*:
      AssertionError, unless `default` is given explicitly (a labelled vec
      whose child for these values is not created yet), then `default`.
    """
    want = {k: str(v) for k, v in (labels or {}).items()}
    samples = metric_samples(text, name)
    if not samples and not metric_declared(text, name):
        raise AssertionError(f"metric {name} is not in /metrics at all (renamed or removed?); "
                             f"families there: {_metric_names(text)}")
    if samples and want and not any(set(want) <= set(got) for got, _ in samples):
        raise AssertionError(f"no sample of {name} has the label(s) {sorted(want)} (renamed label?): "
                             f"{[got for got, _ in samples]}")
    matching = [v for got, v in samples if all(got.get(k) == v for k, v in want.items())]
    if not matching:
        if default is NO_DEFAULT:
            raise AssertionError(f"metric {name} has no sample with labels {want} (samples: "
                                 f"{[got for got, _ in samples]}); pass default= only where that "
                                 "child may legitimately not exist yet")
        return float(default)
    return sum(matching)


def metric_baseline(text: str, name: str, labels: dict | None = None) -> float:
    """The value of a counter *before* the event a test then provokes: 0 when
    the family or its labelled child does not exist yet.

    rust-prometheus prints nothing at all, not even HELP/TYPE, for a labelled
    vec with no child yet, so here an absent family cannot be told from a
    renamed one. Use this only for a baseline that the test then compares
    with a strict `metric_value` / `Daemon.metric` read of the same metric
    and labels (which fails on a rename)."""
    if not metric_samples(text, name) and not metric_declared(text, name):
        return 0.0
    return metric_value(text, name, labels, default=0.0)


# --------------------------------------------------------------------------
# SDK client
# --------------------------------------------------------------------------

def sdk_profile(port: int, tls_ca: str | None = None) -> ClientProfile:
    """Plain HTTP; with `tls_ca`, HTTPS verified against that CA file."""
    if tls_ca is None:
        hp = HttpProfile(endpoint=f"127.0.0.1:{port}", protocol="http")
    else:
        hp = HttpProfile(endpoint=f"127.0.0.1:{port}", protocol="https", certification=tls_ca)
    hp.reqTimeout = 15
    return ClientProfile(httpProfile=hp)


class Api:
    """TrtcClient bound to a daemon; requests are built from plain dicts."""

    ACTIONS = ("CreateCloudRecording", "DescribeCloudRecording", "ModifyCloudRecording", "DeleteCloudRecording")

    def __init__(self, daemon: Daemon, secret_id: str, secret_key: str):
        self.daemon = daemon
        self.cred = credential.Credential(secret_id, secret_key)
        assert daemon.ca or not daemon.tls, "a TLS daemon's SDK client needs its CA file (kiroku(..., ca=...))"
        self.tls_ca = daemon.ca if daemon.tls else None
        self.client = trtc_client.TrtcClient(self.cred, "ap-shanghai", sdk_profile(daemon.port, self.tls_ca))

    def call(self, action: str, params: dict) -> dict:
        assert action in self.ACTIONS
        req = getattr(models, f"{action}Request")()
        req.from_json_string(json.dumps(params))
        resp = getattr(self.client, action)(req)
        return json.loads(resp.to_json_string())

    def error(self, action: str, params: dict) -> TencentCloudSDKException:
        """Calls `action` and returns the SDK exception it must raise."""
        try:
            got = self.call(action, params)
        except TencentCloudSDKException as e:
            return e
        raise AssertionError(f"{action} succeeded but an error was expected: {got}")

    def common(self, version: str = API_VERSION) -> CommonClient:
        """The SDK's generic client: sends any dict, unknown fields included."""
        return CommonClient("trtc", version, self.cred, "ap-shanghai",
                            profile=sdk_profile(self.daemon.port, self.tls_ca))

    # Shorthands --------------------------------------------------------------
    def create(self, params: dict | None = None, **kw) -> str:
        p = create_params(**kw) if params is None else params
        r = self.call("CreateCloudRecording", p)
        assert isinstance(r.get("TaskId"), str) and r["TaskId"], r
        assert r.get("RequestId"), r
        return r["TaskId"]

    def describe(self, task_id: str, app: int = APP_ID) -> dict:
        return self.call("DescribeCloudRecording", {"SdkAppId": app, "TaskId": task_id})

    def delete(self, task_id: str, app: int = APP_ID) -> dict:
        return self.call("DeleteCloudRecording", {"SdkAppId": app, "TaskId": task_id})

    def modify(self, task_id: str, app: int = APP_ID, **fields) -> dict:
        return self.call("ModifyCloudRecording", {"SdkAppId": app, "TaskId": task_id, **fields})

    def describe_error(self, task_id: str, app: int = APP_ID) -> TencentCloudSDKException:
        return self.error("DescribeCloudRecording", {"SdkAppId": app, "TaskId": task_id})

    def wait_gone(self, task_id: str, app: int = APP_ID, timeout: float = 5.0) -> TencentCloudSDKException:
        """Polls Describe until TaskNotExist; meanwhile the task may only be `Exited`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = self.describe(task_id, app)
            except TencentCloudSDKException as e:
                assert e.code == "FailedOperation.TaskNotExist", (e.code, e.message)
                return e
            assert r["Status"] == "Exited", f"a stopped task must be Exited or gone, got {r}"
            if time.monotonic() >= deadline:
                raise AssertionError(f"task {task_id} still answers Describe {timeout} s after it stopped: {r}")
            time.sleep(0.05)


def create_params(app: int = APP_ID, room: str = "1234", user: str | None = None, mode: int = 1,
                  max_idle: int = 60, **extra) -> dict:
    p = {
        "SdkAppId": app,
        "RoomId": room,
        "UserId": user or uniq("rec"),
        "UserSig": "any-user-sig",
        "RecordParams": {"RecordMode": mode, "MaxIdleTime": max_idle},
    }
    p.update(extra)
    return p


# --------------------------------------------------------------------------
# Raw TC3-HMAC-SHA256 requests
# --------------------------------------------------------------------------

def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def utc_date(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d")


def tc3_signature(secret_key: str, timestamp: int, host: str, body: bytes, content_type: str = "application/json",
                  service: str = "trtc", date: str | None = None, unsigned_payload: bool = False) -> str:
    """Signature= of api-schema.md §1.1 (SignedHeaders content-type;host)."""
    date = date or utc_date(timestamp)
    payload_hash = "UNSIGNED-PAYLOAD" if unsigned_payload else hashlib.sha256(body).hexdigest()
    canonical = "\n".join([
        "POST", "/", "",
        f"content-type:{content_type}\nhost:{host}\n",
        "content-type;host",
        payload_hash,
    ])
    string_to_sign = "\n".join([
        "TC3-HMAC-SHA256", str(timestamp), f"{date}/{service}/tc3_request",
        hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
    ])
    k = _hmac(("TC3" + secret_key).encode("utf-8"), date)
    k = _hmac(k, service)
    k = _hmac(k, "tc3_request")
    return hmac.new(k, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def signed_headers(host: str, action: str | None, body: bytes, timestamp: int | None = None,
                   secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY,
                   content_type: str = "application/json", version: str | None = API_VERSION,
                   unsigned_payload: bool = False) -> dict:
    ts = int(time.time()) if timestamp is None else timestamp
    sig = tc3_signature(secret_key, ts, host, body, content_type, unsigned_payload=unsigned_payload)
    h = {
        "Host": host,
        "Content-Type": content_type,
        "X-TC-Timestamp": str(ts),
        "X-TC-Region": "ap-shanghai",
        "X-TC-Language": "en-US",
        "X-TC-RequestClient": "kiroku-e2e",
        "X-TC-TraceId": str(uuid.uuid4()),
        "Authorization": (f"TC3-HMAC-SHA256 Credential={secret_id}/{utc_date(ts)}/trtc/tc3_request, "
                          f"SignedHeaders=content-type;host, Signature={sig}"),
    }
    if action is not None:
        h["X-TC-Action"] = action
    if version is not None:
        h["X-TC-Version"] = version
    if unsigned_payload:
        h["X-TC-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    return h


class RawResponse:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body)
        except ValueError:
            self.json = None

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def error(self) -> dict | None:
        try:
            return self.json["Response"].get("Error")
        except (TypeError, KeyError, AttributeError):
            return None

    @property
    def code(self) -> str | None:
        e = self.error
        return e["Code"] if e else None

    @property
    def message(self) -> str:
        e = self.error
        return e["Message"] if e else ""

    def assert_envelope(self) -> "RawResponse":
        """HTTP 200, Content-Type exactly application/json, a Tencent envelope."""
        assert self.status == 200, (self.status, self.body[:500])
        assert self.content_type == "application/json", (self.content_type, self.body[:500])
        assert isinstance(self.json, dict) and isinstance(self.json.get("Response"), dict), self.body[:500]
        assert isinstance(self.json["Response"].get("RequestId"), str) and self.json["Response"]["RequestId"]
        return self

    def __repr__(self) -> str:
        return f"RawResponse({self.status}, {self.content_type!r}, {self.body[:300]!r})"


def raw_request(daemon: Daemon, action: str | None, body: bytes | str | dict, *, sign: bool = True,
                headers: dict | None = None, drop: tuple = (), timestamp: int | None = None,
                secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY, content_type: str = "application/json",
                version: str | None = API_VERSION, method: str = "POST", timeout: float = 15) -> RawResponse:
    """Sends one request with http.client (no retries, exact bytes)."""
    if isinstance(body, dict) or isinstance(body, list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    if sign:
        h = signed_headers(daemon.host, action, body, timestamp, secret_id, secret_key, content_type, version)
    else:
        h = {"Host": daemon.host, "Content-Type": content_type}
        if action is not None:
            h["X-TC-Action"] = action
        if version is not None:
            h["X-TC-Version"] = version
    h.update(headers or {})
    for name in drop:
        h.pop(name, None)
    if daemon.tls:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", daemon.port, timeout=timeout, context=ssl.create_default_context(cafile=daemon.ca))
    else:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=timeout)
    try:
        conn.putrequest(method, "/", skip_host=True, skip_accept_encoding=True)
        for k, v in h.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Callback receiver
# --------------------------------------------------------------------------

class Callback:
    def __init__(self, headers: dict, body: bytes, answered: int, key: str):
        self.headers = headers
        self.body = body
        self.answered = answered
        self.received_at = time.time()
        # Raises ValueError for anything that is not a callback body (the
        # receiver records those as bad bodies; see CallbackReceiver.bad).
        self.json = json.loads(body)
        if not isinstance(self.json, dict) or not isinstance(self.json.get("EventType"), int):
            raise ValueError("not a JSON object with an integer EventType")
        info = self.json.get("EventInfo")
        if not isinstance(info, dict) or not isinstance(info.get("TaskId"), str) \
                or not isinstance(info.get("Payload"), dict):
            raise ValueError("EventInfo is not an object with a string TaskId and an object Payload")
        expected = base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()
        self.sign_ok = hmac.compare_digest(headers.get("sign", ""), expected)

    @property
    def event_type(self) -> int:
        return self.json["EventType"]

    @property
    def task_id(self) -> str:
        return self.json["EventInfo"]["TaskId"]

    @property
    def payload(self) -> dict:
        return self.json["EventInfo"]["Payload"]

    def __repr__(self) -> str:
        return f"Callback({self.answered}, {self.body!r})"


class BadCallback:
    """A POST to the receiver whose body is not a callback (see Callback)."""

    def __init__(self, headers: dict, body: bytes, error: str):
        self.headers = headers
        self.body = body
        self.error = error
        self.received_at = time.time()

    def __repr__(self) -> str:
        return f"BadCallback({self.error}: {self.body[:300]!r})"


class CallbackReceiver:
    """A threaded HTTP server recording every callback POST.

    The port is chosen at construction so that a daemon can be configured
    with it before the receiver runs ("receiver down"). `status` is what it
    answers (e.g. 500 to force retries).

    A body that is not a JSON callback is never dropped: it is kept in
    `bad`, and from then on every way of reading the callbacks (`calls`,
    `delivered`, `wait_for`, `wait_event`) raises AssertionError, so a check
    that some callback is absent cannot pass because it arrived garbled. The
    fixtures also call `assert_no_bad_bodies()` at teardown.
    """

    def __init__(self, key: str = CALLBACK_KEY, path: str = "/cb"):
        self.key = key
        self.path = path
        self.port = free_port()
        self.status = 200
        # Seconds to wait before answering: a hung receiver. Use more than the
        # daemon's callbacks.timeout_seconds; such attempts are recorded with
        # answered = 0 (never counted as delivered).
        self.delay = 0.0
        self._calls: list[Callback] = []  # every request, whatever was answered
        self.bad: list[BadCallback] = []  # bodies that are not callbacks
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def start(self) -> "CallbackReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                status, delay = receiver.status, receiver.delay
                headers = {k.lower(): v for k, v in self.headers.items()}
                headers["_path"] = self.path
                try:
                    cb: Callback | BadCallback = Callback(headers, body, 0 if delay else status, receiver.key)
                except ValueError as e:
                    cb = BadCallback(headers, body, str(e))
                with receiver._lock:
                    if isinstance(cb, Callback):
                        receiver._calls.append(cb)
                    else:
                        receiver.bad.append(cb)
                if delay:
                    time.sleep(delay)
                out = b'{"code":0}' if status == 200 else b'{"code":1}'
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    pass  # the daemon gave up waiting and closed the connection

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def assert_no_bad_bodies(self) -> None:
        """Fails if any POST had a body that is not a callback."""
        with self._lock:
            bad = list(self.bad)
        if bad:
            raise AssertionError(f"the callback receiver got {len(bad)} body(ies) that are not JSON callbacks "
                                 f"(so no check on its callbacks can be trusted): {bad}")

    @property
    def calls(self) -> list[Callback]:
        """Every callback request so far, whatever was answered (a copy);
        raises AssertionError if any body was not a callback."""
        self.assert_no_bad_bodies()
        with self._lock:
            return list(self._calls)

    def delivered(self, task_id: str | None = None) -> list[Callback]:
        """Callbacks answered 2xx, de-duplicated on the body (at-least-once)."""
        out, seen = [], set()
        for c in self.calls:
            if c.answered // 100 != 2 or c.body in seen:
                continue
            if task_id is not None and c.task_id != task_id:
                continue
            seen.add(c.body)
            out.append(c)
        return out

    def wait_for(self, task_id: str, n: int, timeout: float) -> list[Callback]:
        return wait_until(lambda: (lambda d: d if len(d) >= n else None)(self.delivered(task_id)), timeout,
                          what=f"{n} callback(s) for task {task_id} (got {[c.event_type for c in self.delivered(task_id)]})")

    def wait_event(self, task_id: str, event_type: int, timeout: float) -> Callback:
        def find():
            for c in self.delivered(task_id):
                if c.event_type == event_type:
                    return c
            return None
        return wait_until(find, timeout, what=f"callback {event_type} for task {task_id}")
