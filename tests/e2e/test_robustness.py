"""Garbage on POST / never yields a non-200, a dropped connection or a panic.

Bodies are correctly TC3-signed (unless the test is about the headers), so
that they get past authentication and reach the JSON layer.
"""

from __future__ import annotations

import json
import random
import socket
import time

import pytest
import requests

from kiroku_e2e import APP_ID, create_params, signed_headers

MAX_BODY = 16384

CREATE_FIELDS = {
    # field: a value of the wrong JSON type
    "SdkAppId": "1400000001",
    "RoomId": 1234,
    "UserId": 5,
    "UserSig": ["sig"],
    "RecordParams": "x",
    "StorageParams": 1,
    "RoomIdType": "0",
    "MixTranscodeParams": [],
    "MixLayoutParams": 3,
    "ResourceExpiredHour": 1.5,
    "PrivateMapKey": {},
}
NESTED_WRONG_TYPES = {
    "RecordParams.RecordMode": {"RecordParams": {"RecordMode": "1"}},
    "RecordParams.MaxIdleTime": {"RecordParams": {"RecordMode": 1, "MaxIdleTime": True}},
    "RecordParams.SubscribeStreamUserIds.SubscribeAudioUserIds": {
        "RecordParams": {"RecordMode": 1, "SubscribeStreamUserIds": {"SubscribeAudioUserIds": "a"}}},
    "StorageParams.CloudStorage.FileNamePrefix": {"StorageParams": {"CloudStorage": {"FileNamePrefix": [1]}}},
    "MixLayoutParams.MixLayoutList": {"MixLayoutParams": {"MixLayoutList": {"Top": 0}}},
    "MixLayoutParams.PureAudioDisableLayout": {"MixLayoutParams": {"PureAudioDisableLayout": 1}},
}
OTHER_ACTION_FIELDS = {
    "DescribeCloudRecording": {"SdkAppId": [1], "TaskId": 7, "RecorderKey": False},
    "ModifyCloudRecording": {"SdkAppId": {}, "TaskId": [], "MixLayoutParams": "x", "SubscribeStreamUserIds": 1},
    "DeleteCloudRecording": {"SdkAppId": "x", "TaskId": 1.0},
}


@pytest.fixture(scope="module")
def daemon(kiroku_module):
    return kiroku_module("robust", server={"max_body_bytes": MAX_BODY})


def _ok(r):
    return r.assert_envelope()


def test_malformed_json(daemon):
    for body in [b'{"SdkAppId": 1', b"{", b"}", b"nul", b'{"SdkAppId" 1}', b"{'SdkAppId': 1}", b'{"SdkAppId": 1,}',
                 b"{} {}", b'{"SdkAppId": 1400000001} trailing', b'{"RoomId": "\\x"}']:
        r = _ok(daemon.raw("CreateCloudRecording", body))
        assert r.code == "InvalidParameter.BodyParamsError", (body, r)


@pytest.mark.parametrize("body", [b"[1, 2]", b"[]", b"42", b'"str"', b"null", b"true", b"-1e999"])
def test_non_object_json(daemon, body):
    r = _ok(daemon.raw("CreateCloudRecording", body))
    assert r.code == "InvalidParameter.BodyParamsError", r


@pytest.mark.parametrize("field", list(CREATE_FIELDS))
def test_wrong_type_for_each_create_field(daemon, field):
    p = create_params()
    p[field] = CREATE_FIELDS[field]
    r = _ok(daemon.raw("CreateCloudRecording", p))
    assert r.code == "InvalidParameter.BodyParamsError", r
    assert f"`{field}`" in r.message, r.message


@pytest.mark.parametrize("path", list(NESTED_WRONG_TYPES))
def test_wrong_type_nested(daemon, path):
    p = create_params(mode=2)
    for k, v in NESTED_WRONG_TYPES[path].items():
        p[k] = v
    r = _ok(daemon.raw("CreateCloudRecording", p))
    assert r.code == "InvalidParameter.BodyParamsError", r
    assert path in r.message, r.message


@pytest.mark.parametrize("action", list(OTHER_ACTION_FIELDS))
def test_wrong_types_other_actions(daemon, action):
    for field, value in OTHER_ACTION_FIELDS[action].items():
        body = {"SdkAppId": APP_ID, "TaskId": "abc", field: value}
        r = _ok(daemon.raw(action, body))
        assert r.code == "InvalidParameter.BodyParamsError", (field, r)
        assert field in r.message, r.message


@pytest.mark.parametrize("value", ["99999999999999999999", "-1", "1.5", "1e3", "4294967296"])
def test_numeric_edge_cases_of_sdk_app_id(daemon, value):
    body = '{"SdkAppId": %s, "TaskId": "abc"}' % value
    r = _ok(daemon.raw("DescribeCloudRecording", body))
    assert r.code in ("InvalidParameter.BodyParamsError", "InvalidParameter.SdkAppId"), r
    assert "SdkAppId" in r.message


def test_duplicate_keys_and_nulls(daemon):
    r = _ok(daemon.raw("DescribeCloudRecording", '{"SdkAppId": 1400000001, "SdkAppId": 1400000002, "TaskId": "a"}'))
    assert r.code == "InvalidParameter.BodyParamsError", r
    # null is "not given", as the SDK would do.
    r = _ok(daemon.raw("DescribeCloudRecording", '{"SdkAppId": 1400000001, "TaskId": null}'))
    assert r.code == "MissingParameter.TaskId", r


def test_empty_body_is_an_empty_object(daemon):
    r = _ok(daemon.raw("DescribeCloudRecording", b""))
    assert r.code == "MissingParameter.SdkAppId", r


def test_body_over_max_body_bytes(daemon):
    p = create_params()
    p["PrivateMapKey"] = "k" * (MAX_BODY * 4)
    r = _ok(daemon.raw("CreateCloudRecording", p))
    assert r.code == "RequestSizeLimitExceeded", r
    assert str(MAX_BODY) in r.message
    # Just under the limit is parsed normally (and refused for its content).
    p["PrivateMapKey"] = "k" * (MAX_BODY - 400)
    r = _ok(daemon.raw("CreateCloudRecording", p))
    assert r.code == "InvalidParameterValue", r
    assert "PrivateMapKey" in r.message


def test_huge_body_unsigned_and_chunked(daemon):
    # 2 MiB without a signature, via requests (chunked upload from a generator).
    def gen():
        for _ in range(64):
            yield b"x" * 32768
    r = requests.post(daemon.url + "/", data=gen(), headers={"Content-Type": "application/json",
                                                          "X-TC-Action": "CreateCloudRecording"}, timeout=15)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json()["Response"]["Error"]["Code"] == "RequestSizeLimitExceeded"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_on_root(daemon, method):
    r = requests.request(method, daemon.url + "/", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    err = r.json()["Response"]["Error"]
    assert err["Code"] == "UnsupportedProtocol"
    assert method in err["Message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type(daemon, content_type):
    body = {"SdkAppId": APP_ID, "TaskId": "abc"}
    r = _ok(daemon.raw("DescribeCloudRecording", body, content_type=content_type))
    assert r.code == "UnsupportedProtocol", r
    assert "Content-Type" in r.message


def test_json_content_type_with_charset_is_fine(daemon):
    r = _ok(daemon.raw("DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "abc"},
                       content_type="application/json; charset=utf-8"))
    assert r.code == "FailedOperation.TaskNotExist", r


@pytest.mark.parametrize("header,code", [
    ("X-TC-Action", "InvalidAction"),
    ("X-TC-Version", "NoSuchVersion"),
    ("X-TC-Timestamp", "AuthFailure.InvalidAuthorization"),
    ("Authorization", "AuthFailure.InvalidAuthorization"),
    ("Content-Type", "UnsupportedProtocol"),  # checked before the signature: says what to send
])
def test_missing_headers(daemon, header, code):
    r = _ok(daemon.raw("DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "abc"}, drop=(header,)))
    assert r.code == code, r


def test_garbage_header_values(daemon):
    for h in [{"X-TC-Timestamp": "yesterday"}, {"X-TC-Timestamp": "-99999999999999999999999"},
              {"X-TC-Timestamp": ""}, {"Authorization": "TC3-HMAC-SHA256"},
              {"Authorization": "TC3-HMAC-SHA256 Credential=/////, SignedHeaders=;;, Signature="},
              {"Authorization": "TC3-HMAC-SHA256 Credential=a/b/c/tc3_request, SignedHeaders=x-nope, Signature=zz"},
              {"X-TC-Action": "A" * 4000}, {"X-TC-Version": "\t"}]:
        r = _ok(daemon.raw("DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "abc"}, headers=h))
        assert r.code, (h, r)


def _raw_socket(daemon, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        if len(rest) >= int(line.split(b":")[1]):
                            return out
    return out


def test_non_utf8_bytes(daemon):
    for body in [b"\xff\xfe\xfd", b'{"RoomId": "\xff\xfe"}', b'{"\xc3\x28": 1}', b"\x00" * 100]:
        r = _ok(daemon.raw("CreateCloudRecording", body))
        assert r.code == "InvalidParameter.BodyParamsError", (body, r)
    # Non-UTF-8 (obs-text) header values, sent over a raw socket.
    body = json.dumps({"SdkAppId": APP_ID, "TaskId": "abc"}).encode()
    h = signed_headers(daemon.host, "DescribeCloudRecording", body)
    for name in ("X-TC-Action", "Authorization", "X-TC-Timestamp", "Content-Type"):
        hh = dict(h)
        lines = [b"POST / HTTP/1.1"]
        for k, v in hh.items():
            val = b"\xff\xfe\x80abc" if k == name else v.encode()
            lines.append(k.encode() + b": " + val)
        lines.append(b"Content-Length: " + str(len(body)).encode())
        lines.append(b"Connection: close")
        raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
        resp = _raw_socket(daemon, raw)
        assert resp.startswith(b"HTTP/1.1 200"), (name, resp[:300])
        head, _, payload = resp.partition(b"\r\n\r\n")
        assert b"content-type: application/json\r\n" in head.lower() + b"\r\n", head
        assert json.loads(payload)["Response"]["Error"]["Code"], payload


@pytest.mark.parametrize("depth", [200, 100000])
def test_deeply_nested_json(daemon, depth):
    bodies = [
        b"[" * depth + b"]" * depth,
        b'{"a":' * depth + b"1" + b"}" * depth,
        b'{"RecordParams": ' + b'{"RecordParams": ' * depth + b"{}" + b"}" * (depth + 1),
        b'{"MixLayoutParams": {"MixLayoutList": ' + b"[" * depth + b"]" * depth + b"}}",
    ]
    for body in bodies:
        if len(body) > MAX_BODY:
            body = body[:MAX_BODY - 1]  # unterminated: still garbage, still parsed
        r = _ok(daemon.raw("CreateCloudRecording", body))
        assert r.code in ("InvalidParameter.BodyParamsError", "UnknownParameter"), (body[:60], r)


def test_random_garbage_fuzz(daemon):
    rng = random.Random(20261121)
    actions = ["CreateCloudRecording", "DescribeCloudRecording", "ModifyCloudRecording", "DeleteCloudRecording",
               "", "X" * 100]
    seeds = [json.dumps(create_params(mode=2)).encode(), b'{"SdkAppId": 1400000001, "TaskId": "abc"}']
    for i in range(150):
        kind = i % 3
        if kind == 0:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        else:
            b = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(b))
                op = rng.random()
                if op < 0.4:
                    b[pos] = rng.getrandbits(8)
                elif op < 0.7:
                    del b[pos]
                else:
                    b[pos:pos] = rng.choice([b"{", b"}", b"[", b"]", b'"', b",", b":", b"-", b"9" * 30, b"\\u"])
            body = bytes(b)
        r = _ok(daemon.raw(rng.choice(actions), body, sign=rng.random() < 0.8))
        assert r.error is not None or r.json["Response"].get("TaskId"), r


def test_malformed_http_does_not_kill_the_daemon(daemon):
    for data in [b"GARBAGE\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                 b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",  # then close early
                 b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64]:  # a TLS ClientHello
        try:
            with socket.create_connection(("127.0.0.1", daemon.port), timeout=3) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(3)
                try:
                    s.recv(4096)
                except (socket.timeout, ConnectionResetError):
                    pass
        except OSError:
            pass
    r = requests.get(daemon.url + "/healthz", timeout=5)
    assert r.status_code == 200


def test_metrics_and_healthz_paths(daemon):
    r = requests.get(daemon.url + "/healthz", timeout=5)
    assert r.status_code == 200 and r.text.strip() == "ok"
    r = requests.get(daemon.url + "/metrics", timeout=5)
    assert r.status_code == 200
    for name in ("kiroku_api_requests_total", "kiroku_api_request_duration_seconds", "kiroku_tasks",
                 "kiroku_tasks_started_total", "kiroku_callbacks_pending"):
        assert name in r.text, name
    r = requests.get(daemon.url + "/nope", timeout=5)
    assert r.status_code == 404


def test_daemon_survived_everything(daemon):
    """Runs last in this module: still healthy, still serving, no panic logged."""
    time.sleep(0.2)
    assert daemon.running
    r = requests.get(daemon.url + "/healthz", timeout=5)
    assert r.status_code == 200 and r.text.strip() == "ok"
    api = daemon.sdk()
    task = api.create(create_params())
    assert api.describe(task)["Status"] == "Idle"
    api.delete(task)
    assert "panicked" not in daemon.log_text()
    assert daemon.metric("kiroku_api_requests_total", {"code": "InvalidParameter.BodyParamsError"}) >= 50
