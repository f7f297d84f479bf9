"""One case per error family, through the SDK where it can send the request.

Every refusal must carry a Tencent error code and a message that names the
offending field, and must not leave a task behind.
"""

from __future__ import annotations

import copy
import json
import time

import pytest
import TLSSigAPIv2
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from kiroku_e2e import (
    APP_ID,
    APP_SIG,
    SECRET_ID,
    SECRET_KEY,
    USER_SIG_KEY,
    Api,
    create_params,
    metric_value,
    signed_headers,
    tc3_signature,
    uniq,
)

# ---------------------------------------------------------------------------
# The TC3 signer used for raw requests reproduces the spec's test vector.
# ---------------------------------------------------------------------------

VECTOR_BODY = ('{"SdkAppId": 1400000000, "RoomId": "1234", "UserId": "recorder_1234", "UserSig": "sig", '
               '"RecordParams": {"RecordMode": 1, "MaxIdleTime": 30, "StreamType": 0}, "StorageParams": '
               '{"CloudStorage": {"Vendor": 0, "Region": "ap-shanghai", "Bucket": "b", "AccessKey": "a", '
               '"SecretKey": "s", "FileNamePrefix": ["p1"]}}}')


def test_tc3_signer_reproduces_the_spec_test_vector():
    sig = tc3_signature("secret", 1795248959, "127.0.0.1:18080", VECTOR_BODY.encode())
    assert sig == "5527c0a2ba3a820f13ff60620cef9fe49385e37c7b1a00333c75bdc5429f3149"
    h = signed_headers("127.0.0.1:18080", "CreateCloudRecording", VECTOR_BODY.encode(), 1795248959,
                       "AKIDx", "secret")
    assert h["Authorization"].endswith("Signature=5527c0a2ba3a820f13ff60620cef9fe49385e37c7b1a00333c75bdc5429f3149")
    assert "Credential=AKIDx/2026-11-21/trtc/tc3_request" in h["Authorization"]


def test_raw_signed_request_is_accepted(daemon, api):
    body = json.dumps(create_params())
    r = daemon.raw("CreateCloudRecording", body).assert_envelope()
    assert r.code is None, r
    task = r.json["Response"]["TaskId"]
    assert api.describe(task)["Status"] == "Idle"
    # X-TC-Content-SHA256: UNSIGNED-PAYLOAD (an SDK option) signs a fixed payload hash.
    body = json.dumps({"SdkAppId": APP_ID, "TaskId": task}).encode()
    h = signed_headers(daemon.host, "DeleteCloudRecording", body, unsigned_payload=True)
    r = daemon.raw("DeleteCloudRecording", body, sign=False, headers=h).assert_envelope()
    assert r.code is None, r
    api.wait_gone(task)


# ---------------------------------------------------------------------------
# MissingParameter.*
# ---------------------------------------------------------------------------

def _without(params: dict, *path: str) -> dict:
    p = copy.deepcopy(params)
    cur = p
    for k in path[:-1]:
        cur = cur[k]
    del cur[path[-1]]
    return p


@pytest.mark.parametrize("path,code,field", [
    (("RecordParams",), "MissingParameter.RecordParams", "RecordParams"),
    (("RecordParams", "RecordMode"), "MissingParameter.RecordMode", "RecordParams.RecordMode"),
    (("SdkAppId",), "MissingParameter.SdkAppId", "SdkAppId"),
    (("RoomId",), "MissingParameter.RoomId", "RoomId"),
    (("UserId",), "MissingParameter.UserId", "UserId"),
    (("UserSig",), "MissingParameter.UserSig", "UserSig"),
])
def test_missing_parameter_on_create(api, path, code, field):
    e = api.error("CreateCloudRecording", _without(create_params(), *path))
    assert e.code == code, (e.code, e.message)
    assert field in e.message


@pytest.mark.parametrize("missing,code", [
    ("Vendor", "MissingParameter.Vendor"), ("Region", "MissingParameter.Region"),
    ("Bucket", "MissingParameter.Bucket"), ("AccessKey", "MissingParameter.AccessKey"),
    ("SecretKey", "MissingParameter.SecretKey"),
])
def test_missing_cloud_storage_fields(api, missing, code):
    cs = {"Vendor": 0, "Region": "ap-shanghai", "Bucket": "b", "AccessKey": "a", "SecretKey": "s"}
    del cs[missing]
    e = api.error("CreateCloudRecording", create_params(StorageParams={"CloudStorage": cs}))
    assert e.code == code, (e.code, e.message)
    assert f"StorageParams.CloudStorage.{missing}" in e.message


def test_empty_storage_params_is_missing_cloud_storage(api):
    e = api.error("CreateCloudRecording", create_params(StorageParams={}))
    assert e.code == "MissingParameter.CloudStorage"
    assert "StorageParams.CloudStorage" in e.message


@pytest.mark.parametrize("action", ["DescribeCloudRecording", "ModifyCloudRecording", "DeleteCloudRecording"])
def test_missing_task_id(api, action):
    e = api.error(action, {"SdkAppId": APP_ID})
    assert e.code == "MissingParameter.TaskId"
    assert "TaskId" in e.message


# ---------------------------------------------------------------------------
# InvalidParameter.* / InvalidParameterValue.*
# ---------------------------------------------------------------------------

def _mixed(**extra) -> dict:
    return create_params(mode=2, **extra)


def _video(w: int, h: int) -> dict:
    return {"VideoParams": {"Width": w, "Height": h, "Fps": 15, "BitRate": 1000000, "Gop": 2}}


def _tiles(n: int) -> dict:
    return {"MixLayoutMode": 4, "MixLayoutList": [{"Top": 0, "Left": 0, "Width": 10, "Height": 10}] * n}


def _marks(n: int) -> dict:
    mark = {"WaterMarkType": 1, "WaterMarkChar": {"Top": 0, "Left": 0, "Width": 10, "Height": 10, "Chars": "x"}}
    return {"MixLayoutMode": 3, "WaterMarkList": [mark] * n}


def _record(**rp) -> dict:
    p = create_params()
    p["RecordParams"].update(rp)
    return p


_CS = {"Vendor": 0, "Region": "ap-shanghai", "Bucket": "b", "AccessKey": "a", "SecretKey": "s"}

INVALID = [
    ("record-mode-3", _record(RecordMode=3), "InvalidParameter.OutOfRange", "RecordParams.RecordMode"),
    ("record-mode-0", _record(RecordMode=0), "InvalidParameter.OutOfRange", "RecordParams.RecordMode"),
    ("max-idle-4", _record(MaxIdleTime=4), "InvalidParameter.OutOfRange", "RecordParams.MaxIdleTime"),
    ("max-idle-86401", _record(MaxIdleTime=86401), "InvalidParameter.OutOfRange", "RecordParams.MaxIdleTime"),
    ("stream-type-3", _record(StreamType=3), "InvalidParameter.OutOfRange", "RecordParams.StreamType"),
    ("max-file-duration-0", _record(MaxMediaFileDuration=0), "InvalidParameter.OutOfRange",
     "RecordParams.MaxMediaFileDuration"),
    ("aac-needs-audio-only", _record(OutputFormat=4), "InvalidParameter.RecordAudioOnly", "RecordParams.OutputFormat"),
    ("video-1920x1088", _mixed(MixTranscodeParams=_video(1920, 1088)), "InvalidParameter.VideoResolution",
     "MixTranscodeParams.VideoParams.Width"),
    ("video-2560x720", _mixed(MixTranscodeParams=_video(2560, 720)), "InvalidParameter.VideoResolution",
     "MixTranscodeParams.VideoParams"),
    ("audio-sample-rate-4", _mixed(MixTranscodeParams={"AudioParams": {"SampleRate": 4, "Channel": 2,
                                                                       "BitRate": 64000}}),
     "InvalidParameter.AudioEncodeParams", "MixTranscodeParams.AudioParams.SampleRate"),
    ("26-layout-entries", _mixed(MixLayoutParams=_tiles(26)), "InvalidParameter.PresetLayoutConfig",
     "MixLayoutParams.MixLayoutList"),
    ("26-watermarks", _mixed(MixLayoutParams=_marks(26)), "InvalidParameter.WaterMark",
     "MixLayoutParams.WaterMarkList"),
    ("tile-outside-canvas", _mixed(MixLayoutParams={"MixLayoutMode": 4, "MixLayoutList": [
        {"Top": 0, "Left": 200, "Width": 161, "Height": 100}]}),
     "InvalidParameter.PresetLayoutConfig", "MixLayoutParams.MixLayoutList[0]"),
    ("tile-below-canvas", _mixed(MixTranscodeParams=_video(1280, 720), MixLayoutParams={"MixLayoutMode": 4,
                                 "MixLayoutList": [{"Top": 700, "Left": 0, "Width": 100, "Height": 21}]}),
     "InvalidParameter.PresetLayoutConfig", "MixLayoutParams.MixLayoutList[0]"),
    ("custom-layout-without-list", _mixed(MixLayoutParams={"MixLayoutMode": 4}),
     "MissingParameter.PresetLayoutConfig", "MixLayoutParams.MixLayoutList"),
    ("background-gif", _mixed(MixLayoutParams={"MixLayoutMode": 3, "BackgroundImageUrl": "http://x/a.gif"}),
     "InvalidParameter.CheckSuffixFailed", "MixLayoutParams.BackgroundImageUrl"),
    ("background-colour", _mixed(MixLayoutParams={"MixLayoutMode": 3, "BackGroundColor": "red"}),
     "InvalidParameterValue", "MixLayoutParams.BackGroundColor"),
    ("audio-allow-and-deny", _record(SubscribeStreamUserIds={"SubscribeAudioUserIds": ["a"],
                                                             "UnSubscribeAudioUserIds": ["b"]}),
     "InvalidParameter.UserIds", "SubscribeAudioUserIds"),
    ("video-allow-and-deny", _record(SubscribeStreamUserIds={"SubscribeVideoUserIds": ["a"],
                                                             "UnSubscribeVideoUserIds": ["b"]}),
     "InvalidParameter.UserIds", "UnSubscribeVideoUserIds"),
    ("33-subscribed-users", _record(SubscribeStreamUserIds={"SubscribeAudioUserIds": [f"u{i}" for i in range(33)]}),
     "InvalidParameter.UserIds", "RecordParams.SubscribeStreamUserIds.SubscribeAudioUserIds"),
    ("cloud-storage-and-vod", create_params(StorageParams={"CloudStorage": _CS, "CloudVod": {"TencentVod": {}}}),
     "InvalidParameter.StorageParams", "StorageParams.CloudVod"),
    ("vendor-2", create_params(StorageParams={"CloudStorage": dict(_CS, Vendor=2)}),
     "InvalidParameter.OutOfRange", "StorageParams.CloudStorage.Vendor"),
    ("bad-prefix", create_params(StorageParams={"CloudStorage": dict(_CS, FileNamePrefix=["a/b"])}),
     "InvalidParameterValue", "StorageParams.CloudStorage.FileNamePrefix"),
    ("integer-room-abc", create_params(room="abc"), "InvalidParameterValue.RoomId", "RoomId"),
    ("integer-room-too-big", create_params(room="4294967295"), "InvalidParameterValue.RoomId", "RoomId"),
    ("string-room-bad-char", create_params(room="caf\u00e9", RoomIdType=0), "InvalidParameter.StrRoomId", "RoomId"),
    ("room-id-type-2", create_params(RoomIdType=2), "InvalidParameter.OutOfRange", "RoomIdType"),
    ("user-id-space", create_params(user="a b"), "InvalidParameter.UserId", "UserId"),
    ("user-id-33", create_params(user="x" * 33), "InvalidParameter.UserId", "UserId"),
    ("sdk-app-id-0", create_params(app=0), "InvalidParameter.SdkAppId", "SdkAppId"),
    ("resource-expired-5", create_params(ResourceExpiredHour=5), "InvalidParameter.OutOfRange", "ResourceExpiredHour"),
    ("resource-expired-721", create_params(ResourceExpiredHour=721), "InvalidParameter.OutOfRange",
     "ResourceExpiredHour"),
]


@pytest.mark.parametrize("params,code,field", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_parameter_on_create(api, daemon, params, code, field):
    before = metric_value(daemon.metrics_text(), "kiroku_tasks_started_total")
    e = api.error("CreateCloudRecording", params)
    assert e.code == code, (e.code, e.message)
    assert field in e.message, e.message
    assert metric_value(daemon.metrics_text(), "kiroku_tasks_started_total") == before


def test_boundaries_are_accepted(api):
    """The edges of the ranges refused above are themselves fine."""
    ok = [
        _record(MaxIdleTime=5),
        _record(MaxIdleTime=86400),
        _mixed(MixTranscodeParams=_video(1920, 1080)),
        _mixed(MixTranscodeParams=_video(1080, 1920)),
        _mixed(MixLayoutParams=_tiles(25)),
        _mixed(MixLayoutParams=_marks(25)),
        _record(SubscribeStreamUserIds={"SubscribeAudioUserIds": ["a"], "UnSubscribeVideoUserIds": ["b", "c.*$"]}),
        create_params(ResourceExpiredHour=720),
    ]
    for p in ok:
        task = api.create(p)
        api.delete(task)


@pytest.mark.parametrize("action,params,code", [
    ("DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "bad task/id"}, "InvalidParameter.TaskId"),
    ("ModifyCloudRecording", {"SdkAppId": APP_ID, "TaskId": "x" * 129}, "InvalidParameter.TaskId"),
])
def test_invalid_task_id(api, action, params, code):
    e = api.error(action, params)
    assert e.code == code
    assert "TaskId" in e.message


def test_modify_with_invalid_subscription_names_the_field(api):
    task = api.create(create_params())
    e = api.error("ModifyCloudRecording", {"SdkAppId": APP_ID, "TaskId": task, "SubscribeStreamUserIds": {
        "SubscribeAudioUserIds": ["a"], "UnSubscribeAudioUserIds": ["b"]}})
    assert e.code == "InvalidParameter.UserIds"
    assert "SubscribeStreamUserIds.SubscribeAudioUserIds" in e.message
    api.delete(task)


def test_wrong_json_type_through_the_sdk(api):
    # The SDK sends whatever the model holds: a string where an int belongs.
    p = create_params()
    p["RecordParams"]["MaxIdleTime"] = "30"
    e = api.error("CreateCloudRecording", p)
    assert e.code == "InvalidParameter.BodyParamsError"
    assert "RecordParams.MaxIdleTime" in e.message


# ---------------------------------------------------------------------------
# UserSig (TLS-Sig-API v2) for an app with user_sig_key
# ---------------------------------------------------------------------------

def test_valid_user_sig_is_accepted(api):
    bot = uniq("sig")
    sig = TLSSigAPIv2.TLSSigAPIv2(APP_SIG, USER_SIG_KEY).gen_sig(bot, 3600)
    task = api.create(create_params(app=APP_SIG, user=bot, UserSig=sig))
    assert api.describe(task, app=APP_SIG)["Status"] == "Idle"
    api.delete(task, app=APP_SIG)


def _expired_sig(bot: str, monkeypatch) -> str:
    with monkeypatch.context() as m:
        # Issued two hours ago, valid for one hour.
        m.setattr(TLSSigAPIv2.time, "time", lambda: time.time_ns() / 1e9 - 7200)
        return TLSSigAPIv2.TLSSigAPIv2(APP_SIG, USER_SIG_KEY).gen_sig(bot, 3600)


@pytest.mark.parametrize("case", ["wrong-key", "wrong-user", "wrong-app", "expired", "garbage"])
def test_bad_user_sig_is_refused(api, case, monkeypatch):
    bot = uniq("sig")
    sig = {
        "wrong-key": lambda: TLSSigAPIv2.TLSSigAPIv2(APP_SIG, "not-the-key").gen_sig(bot, 3600),
        "wrong-user": lambda: TLSSigAPIv2.TLSSigAPIv2(APP_SIG, USER_SIG_KEY).gen_sig("someone_else", 3600),
        "wrong-app": lambda: TLSSigAPIv2.TLSSigAPIv2(APP_ID, USER_SIG_KEY).gen_sig(bot, 3600),
        "expired": lambda: _expired_sig(bot, monkeypatch),
        "garbage": lambda: "eJyrVgrxCdYrSy1SslIy0jNQ0gHzM1NS80oyUzJBwqbGBhClxSnZiQUFmSlKVgZGhgYGEImy1CJDBQMDAyUA",
    }[case]()
    e = api.error("CreateCloudRecording", create_params(app=APP_SIG, user=bot, UserSig=sig))
    assert e.code == "InvalidParameter.UserSig", (e.code, e.message)
    assert "UserSig" in e.message
    if case == "expired":
        assert "expired" in e.message
    if case == "wrong-user":
        assert "someone_else" in e.message


def test_user_sig_is_not_checked_without_user_sig_key(api):
    # APP_ID has no user_sig_key: any non-empty UserSig will do.
    task = api.create(create_params(app=APP_ID, UserSig="not-a-real-sig"))
    api.delete(task)


# ---------------------------------------------------------------------------
# Unknown parameters, actions, versions (SDK CommonClient and raw requests)
# ---------------------------------------------------------------------------

def test_unknown_parameter_top_level(api):
    p = create_params()
    p["Colour"] = "blue"
    with pytest.raises(TencentCloudSDKException) as ei:
        api.common().call_json("CreateCloudRecording", p)
    assert ei.value.code == "UnknownParameter"
    assert "`Colour`" in ei.value.message


def test_unknown_parameter_nested(api, daemon):
    p = create_params()
    p["RecordParams"]["Foo"] = 1
    r = daemon.raw("CreateCloudRecording", p).assert_envelope()
    assert r.code == "UnknownParameter"
    assert "RecordParams.Foo" in r.message
    p = {"SdkAppId": APP_ID, "TaskId": "abc", "MixLayoutParams": {"MixLayoutList": [{"Top": 0, "Bar": 1}]}}
    r = daemon.raw("ModifyCloudRecording", p).assert_envelope()
    assert r.code == "UnknownParameter"
    assert "Bar" in r.message


def test_common_client_can_create(api):
    # The generic client sends exactly the same request as TrtcClient.
    r = api.common().call_json("CreateCloudRecording", create_params())
    task = r["Response"]["TaskId"]
    assert api.describe(task)["Status"] == "Idle"
    api.delete(task)


def test_invalid_action(api, daemon):
    with pytest.raises(TencentCloudSDKException) as ei:
        api.common().call_json("FooBar", {"SdkAppId": APP_ID})
    assert ei.value.code == "InvalidAction"
    assert "FooBar" in ei.value.message
    r = daemon.raw(None, {"SdkAppId": APP_ID}).assert_envelope()
    assert r.code == "InvalidAction"


def test_no_such_version(api):
    with pytest.raises(TencentCloudSDKException) as ei:
        api.common(version="2020-01-01").call_json("DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "abc"})
    assert ei.value.code == "NoSuchVersion"
    assert "2019-07-22" in ei.value.message


# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------

def test_wrong_secret_key(daemon):
    e = Api(daemon, SECRET_ID, "wrong-key").error("DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "abc"})
    assert e.code == "AuthFailure.SignatureFailure"


def test_unknown_secret_id_is_answered_as_a_wrong_signature(daemon):
    """Which SecretIds exist is not revealed (docs/security.md): an unknown
    one gets the very code and message a wrong key gets."""
    params = {"SdkAppId": APP_ID, "TaskId": "abc"}
    e = Api(daemon, "AKIDunknown", SECRET_KEY).error("DescribeCloudRecording", params)
    wrong = Api(daemon, SECRET_ID, "wrong-key").error("DescribeCloudRecording", params)
    assert e.code == wrong.code == "AuthFailure.SignatureFailure"
    assert e.message == wrong.message
    assert "AKIDunknown" not in e.message


@pytest.mark.parametrize("skew", [-600, 600])
def test_expired_timestamp(daemon, skew):
    body = json.dumps({"SdkAppId": APP_ID, "TaskId": "abc"})
    r = daemon.raw("DescribeCloudRecording", body, timestamp=int(time.time()) + skew).assert_envelope()
    assert r.code == "AuthFailure.SignatureExpire", r
    # Within 5 minutes is still fine (the task simply does not exist).
    r = daemon.raw("DescribeCloudRecording", body, timestamp=int(time.time()) + skew // 3).assert_envelope()
    assert r.code == "FailedOperation.TaskNotExist", r


def test_tampered_body_fails_the_signature(daemon):
    body = json.dumps({"SdkAppId": APP_ID, "TaskId": "abc"}).encode()
    h = signed_headers(daemon.host, "DescribeCloudRecording", body)
    r = daemon.raw("DescribeCloudRecording", body.replace(b"abc", b"abd"), sign=False, headers=h).assert_envelope()
    assert r.code == "AuthFailure.SignatureFailure"


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer abc", "TC3-HMAC-SHA256 Credential=AKID/2020-01-01/trtc, SignedHeaders=host, Signature=00",
    "TC3-HMAC-SHA256 SignedHeaders=content-type;host, Signature=00",
])
def test_invalid_authorization(daemon, authorization):
    body = {"SdkAppId": APP_ID, "TaskId": "abc"}
    if authorization is None:
        r = daemon.raw("DescribeCloudRecording", body, drop=("Authorization",))
    else:
        r = daemon.raw("DescribeCloudRecording", body, headers={"Authorization": authorization})
    assert r.assert_envelope().code == "AuthFailure.InvalidAuthorization", r


def test_unknown_sdk_app_id(api):
    e = api.error("CreateCloudRecording", create_params(app=1400999999))
    assert e.code == "FailedOperation.SdkAppIdNotExist"
    assert "1400999999" in e.message
    e = api.describe_error("abc", app=1400999999)
    assert e.code == "FailedOperation.SdkAppIdNotExist"


def test_errors_are_counted_in_metrics(daemon, api):
    before = daemon.metric_baseline("kiroku_api_requests_total", {"action": "CreateCloudRecording",
                                                                    "code": "MissingParameter.RecordParams"})
    api.error("CreateCloudRecording", _without(create_params(), "RecordParams"))
    after = daemon.metric("kiroku_api_requests_total", {"action": "CreateCloudRecording",
                                                          "code": "MissingParameter.RecordParams"})
    assert after == before + 1
