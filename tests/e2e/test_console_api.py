"""The console's endpoints (issue 18), driven over HTTP as the page drives
them and checked independently (ffprobe, the callback receiver): sign-in
buys a read-only session cookie; recording actions go through the REST API
with the operator's bearer token (the same validation and errors as a
TC3-signed call); tasks list their playable files and callbacks with their
delivery state; status shows load and alerts. The page itself is tested in
Chromium (test_console.py)."""

from __future__ import annotations

import time

import requests

from independent_publisher import Publisher, whip_url
from kiroku_e2e import ADMIN_TOKEN, APP_ID, APP_SIG, create_params, wait_until
from recording import ffprobe


def api(d, action: str, body: dict, **headers) -> dict:
    h = {"X-TC-Action": action, "X-TC-Version": "2019-07-22", "Content-Type": "application/json", **headers}
    r = requests.post(d.url + "/", json=body, headers=h, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["Response"]


def test_the_console_endpoints_record_list_and_play(kiroku, receiver, tmp_path):
    d = kiroku("console-api", callback_url=receiver.url, recording={"segment_seconds": 2},
               limits={"max_tasks": 2, "api_rate_per_second": 1000})
    page = d.url + "/console"
    r = requests.get(page, timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.headers
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert requests.get(d.url + "/console/hls.min.js", timeout=5).status_code == 200
    assert requests.get(d.url + "/console/..%2Fmod.rs", timeout=5).status_code == 404

    # Sign-in: a wrong credential is refused, the right one buys a cookie.
    s = requests.Session()
    wrong = s.post(d.url + "/v1/console/session", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401 and "admin_token" in wrong.json()["error"]
    assert s.get(d.url + "/v1/tasks", timeout=5).status_code == 401
    ok = s.post(d.url + "/v1/console/session", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    assert ok.status_code == 204, ok.text
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    info = s.get(d.url + "/v1/console/info", timeout=5).json()
    assert {a["sdk_app_id"]: a["user_sig"] for a in info["apps"]}[APP_SIG] is True
    assert info["max_tasks"] == 2 and info["dev_mode"] is False

    # The cookie reads; it changes nothing: the API wants the bearer token.
    refused = s.post(d.url + "/", json=create_params(room="7701"),
                     headers={"X-TC-Action": "CreateCloudRecording", "X-TC-Version": "2019-07-22"}, timeout=5)
    assert "Error" in refused.json()["Response"], refused.text
    assert s.post(d.url + "/v1/console/usersig", json={"sdk_app_id": APP_SIG, "user_id": "u"},
                  timeout=5).status_code == 401
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    # A Create the API refuses shows Tencent's code and message.
    bad = api(d, "CreateCloudRecording", create_params(room="7701", max_idle=0), **bearer)
    assert bad["Error"]["Code"].startswith("InvalidParameter"), bad

    # A UserSig for the browser's publisher, minted from the app's key.
    sig = requests.post(d.url + "/v1/console/usersig", json={"sdk_app_id": APP_SIG, "user_id": "cam"},
                        headers=bearer, timeout=5)
    assert sig.status_code == 200 and len(sig.json()["user_sig"]) > 40, sig.text
    none = requests.post(d.url + "/v1/console/usersig", json={"sdk_app_id": APP_ID, "user_id": "cam"},
                         headers=bearer, timeout=5)
    assert none.status_code == 404

    # A mixed recording started the console's way, with a publisher.
    params = create_params(room="7702", mode=2, max_idle=30)
    params["MixTranscodeParams"] = {"VideoParams": {"Width": 320, "Height": 240, "Fps": 15, "BitRate": 300000,
                                                     "Gop": 2}}
    params["RecordParams"]["OutputFormat"] = 1
    task = api(d, "CreateCloudRecording", params, **bearer)["TaskId"]
    pub = Publisher(whip_url(d.url, APP_ID, 7702, "cam"), fps=15).start(timeout=15)
    try:
        rooms = wait_until(lambda: s.get(d.url + "/v1/rooms", timeout=5).json()["rooms"], 10, 0.2, "the room")
        assert rooms[0]["users"][0]["user_id"] == "cam"
        receiver.wait_event(task, 307, 30)
        listed = wait_until(lambda: next((t for t in s.get(d.url + "/v1/tasks", timeout=5).json()["tasks"]
                                          if t["task_id"] == task and t["files"]), None), 15, 0.3, "the task's files")
        assert listed["mode"] == "mixed" and listed["status"] == "in_progress" and listed["storage"] == "local"
        playlist = next(f for f in listed["files"] if f["kind"] == "hls")
        live = s.get(d.url + playlist["url"], timeout=5)
        assert live.status_code == 200 and live.headers["content-type"] == "application/vnd.apple.mpegurl"
        segment = next(line for line in live.text.splitlines() if line.endswith(".ts"))
        seg_url = d.url + playlist["url"].rsplit("/", 1)[0] + "/" + segment
        part = s.get(seg_url, headers={"Range": "bytes=0-187"}, timeout=5)
        assert part.status_code == 206 and len(part.content) == 188 and part.content[0] == 0x47
        assert requests.get(seg_url, timeout=5).status_code == 401, "no cookie, no file"
        assert s.get(d.url + "/v1/files/../state.redb", timeout=5).status_code in (400, 404)
        status = s.get(d.url + "/v1/status", timeout=5).json()
        assert status["tasks"] == 1 and status["max_tasks"] == 2 and status["publishing_tracks"] >= 1, status
        assert status["health"] == "ok" and status["spool_capacity_bytes"] > 0
        # The same cost figures as GET /v1/capacity: one task costs something.
        assert status["capacity_admit_units"] == 80.0 and 0 < status["capacity_used_units"] < 80, status
        # A second task fills the box: the capacity alert fires.
        second = api(d, "CreateCloudRecording", create_params(room="7703", max_idle=30), **bearer)["TaskId"]
        alerts = s.get(d.url + "/v1/status", timeout=5).json()["alerts"]
        assert [a["name"] for a in alerts] == ["KirokuCapacityNearFull"] and alerts[0]["severity"] == "critical"
        api(d, "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": second}, **bearer)
        time.sleep(3)
    finally:
        pub.stop()
    api(d, "DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": task}, **bearer)
    receiver.wait_event(task, 302, 30)
    ended = wait_until(lambda: next((t for t in s.get(d.url + "/v1/tasks", timeout=5).json()["tasks"]
                                     if t["task_id"] == task and t["status"] == "ended"
                                     and any(f["kind"] == "mp4" for f in t["files"])), None),
                       60, 0.5, "the ended task with its MP4")
    mp4 = next(f for f in ended["files"] if f["kind"] == "mp4")
    local = tmp_path / "console.mp4"
    local.write_bytes(s.get(d.url + mp4["url"], timeout=30).content)
    info = ffprobe(local)
    assert float(info["format"]["duration"]) > 2, info["format"]
    # Every callback the receiver got is listed, delivered, in order.
    def listed_callbacks():
        t = next(t for t in s.get(d.url + "/v1/tasks", timeout=5).json()["tasks"] if t["task_id"] == task)
        return t["callbacks"]
    callbacks = wait_until(lambda: (lambda cs: cs if cs and all(c["state"] == "delivered" for c in cs) else None)(
        listed_callbacks()), 10, 0.3, "every callback delivered")
    got = [c.event_type for c in receiver.delivered(task)]
    assert [c["event_type"] for c in callbacks] == got, (callbacks, got)
    assert all(c["attempts"] == 1 for c in callbacks), callbacks
    # Signing out ends the session.
    s.delete(d.url + "/v1/console/session", timeout=5)
    assert s.get(d.url + "/v1/tasks", timeout=5).status_code == 401
