"""Task lifecycle through Tencent's own Python SDK (TrtcClient)."""

from __future__ import annotations

import pytest

from kiroku_e2e import APP_ID, APP_ID2, create_params, metric_value, uniq

CANVAS_1280x720 = {
    "VideoParams": {"Width": 1280, "Height": 720, "Fps": 25, "BitRate": 1500000, "Gop": 2},
    "AudioParams": {"SampleRate": 2, "Channel": 1, "BitRate": 48000},
}


def custom_layout() -> dict:
    return {
        "MixLayoutMode": 4,
        "BackGroundColor": "#1A2B3C",
        "MixLayoutList": [
            {"Top": 0, "Left": 0, "Width": 640, "Height": 720, "UserId": "alice", "RenderMode": 1, "ImageLayer": 0},
            {"Top": 0, "Left": 640, "Width": 640, "Height": 720, "UserId": "bob", "Alpha": 10, "RenderMode": 2,
             "MediaId": 1, "ImageLayer": 1, "SubBackgroundImage": "https://example.com/placeholder.png"},
            {"Top": 500, "Left": 1080, "Width": 200, "Height": 220},
        ],
        "WaterMarkList": [
            {"WaterMarkType": 0, "WaterMarkImage": {"WaterMarkUrl": "https://example.com/logo.png",
                                                   "Top": 10, "Left": 10, "Width": 100, "Height": 50}},
            {"WaterMarkType": 1, "WaterMarkChar": {"Top": 60, "Left": 10, "Width": 300, "Height": 40,
                                                  "Chars": "kiroku e2e", "FontSize": 20, "FontColor": "#FFFFFF",
                                                  "BackGroundColor": "#000000", "Font": "SourceHanSans"}},
            {"WaterMarkType": 2, "WaterMarkTimestamp": {"Pos": 3, "TimeZone": 9, "Font": "Tencent"}},
        ],
    }


def test_full_lifecycle_with_the_sdk(api, daemon):
    bot = uniq("rec")
    task = api.create(create_params(user=bot, room="20001"))
    assert len(task) >= 8

    d = api.describe(task)
    assert d["TaskId"] == task
    assert d["Status"] == "Idle"
    assert d["StorageFileList"] == []
    assert d["RequestId"]

    # Tasks belong to their SdkAppId: another app can neither see nor stop it.
    assert api.describe_error(task, app=APP_ID2).code == "FailedOperation.TaskNotExist"
    assert api.error("DeleteCloudRecording", {"SdkAppId": APP_ID2, "TaskId": task}
                     ).code == "FailedOperation.TaskNotExist"
    assert api.describe(task)["Status"] == "Idle"

    m = api.modify(task, SubscribeStreamUserIds={
        "SubscribeAudioUserIds": ["alice", "bob"], "UnSubscribeVideoUserIds": ["screen.*$"]})
    assert m["TaskId"] == task
    # Full overwrite, again, still fine; the task is still there and Idle.
    api.modify(task, SubscribeStreamUserIds={"SubscribeVideoUserIds": ["carol"]})
    assert api.describe(task)["Status"] == "Idle"

    assert api.delete(task)["TaskId"] == task
    e = api.wait_gone(task)
    assert task in e.message
    # After the stop every call on the task answers TaskNotExist.
    assert api.error("ModifyCloudRecording", {"SdkAppId": APP_ID, "TaskId": task,
                                              "SubscribeStreamUserIds": {"SubscribeAudioUserIds": ["x"]}}
                     ).code == "FailedOperation.TaskNotExist"
    assert api.error("DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": task}).code == "FailedOperation.TaskNotExist"

    # The same bot may record the same room again: a new TaskId.
    task2 = api.create(create_params(user=bot, room="20001"))
    assert task2 != task
    assert api.describe(task2)["Status"] == "Idle"
    api.delete(task2)

    text = daemon.metrics_text()
    assert metric_value(text, "kiroku_api_requests_total", {"action": "CreateCloudRecording", "code": "Success"}) >= 2
    assert metric_value(text, "kiroku_api_requests_total",
                        {"action": "DescribeCloudRecording", "code": "FailedOperation.TaskNotExist"}) >= 2
    assert metric_value(text, "kiroku_tasks_started_total") >= 2
    assert metric_value(text, "kiroku_tasks_stopped_total", {"reason": "api"}) >= 2
    assert "kiroku_api_request_duration_seconds_bucket" in text


def test_describe_unknown_task(api):
    e = api.describe_error("0123456789abcdef0123456789abcdef")
    assert e.code == "FailedOperation.TaskNotExist"


def test_mixed_mode_with_custom_layout_and_watermarks(api):
    params = create_params(mode=2, room="20002", MixTranscodeParams=CANVAS_1280x720,
                           MixLayoutParams=custom_layout())
    params["RecordParams"].update(StreamType=0, OutputFormat=1, MaxMediaFileDuration=60, FillType=1,
                                  SubscribeAbility=0, MediaId=0)
    task = api.create(params)
    assert api.describe(task)["Status"] == "Idle"

    # Modify the layout: a preset layout with a watermark (full overwrite).
    r = api.modify(task, MixLayoutParams={
        "MixLayoutMode": 1, "MaxResolutionUserId": "alice", "MediaId": 0, "MaxResolutionUserAlign": 0,
        "RenderMode": 0, "PureAudioDisableLayout": True, "BackgroundImageUrl": "https://example.com/bg.jpg",
        "BackgroundImageRenderMode": 2,
        "WaterMarkList": [{"WaterMarkType": 1, "WaterMarkChar": {"Top": 0, "Left": 0, "Width": 100,
                                                                "Height": 20, "Chars": "live"}}],
    })
    assert r["TaskId"] == task

    # The task's own 1280x720 canvas is what tiles are checked against:
    # x = 1000..1280 fits (it would not fit the default 360x640 canvas)...
    inside = {"MixLayoutMode": 4, "MixLayoutList": [{"Top": 0, "Left": 1000, "Width": 280, "Height": 720}]}
    assert api.modify(task, MixLayoutParams=inside)["TaskId"] == task
    # ... but x = 1000..1300 does not.
    outside = {"MixLayoutMode": 4, "MixLayoutList": [{"Top": 0, "Left": 1000, "Width": 300, "Height": 720}]}
    e = api.error("ModifyCloudRecording", {"SdkAppId": APP_ID, "TaskId": task, "MixLayoutParams": outside})
    assert e.code == "InvalidParameter.PresetLayoutConfig", (e.code, e.message)
    assert "MixLayoutList[0]" in e.message
    # A refused Modify leaves the task running.
    assert api.describe(task)["Status"] == "Idle"

    # Modify may change both at once.
    api.modify(task, MixLayoutParams={"MixLayoutMode": 3},
               SubscribeStreamUserIds={"SubscribeVideoUserIds": ["alice", "bob"]})
    api.delete(task)
    api.wait_gone(task)


def test_mixed_mode_with_defaults(api):
    # No MixTranscodeParams / MixLayoutParams: defaults (360x640, nine-grid).
    task = api.create(create_params(mode=2, room="20003"))
    # Default canvas is 360x640: a 360x640 custom tile fits, 361 wide does not.
    api.modify(task, MixLayoutParams={"MixLayoutMode": 4,
                                      "MixLayoutList": [{"Top": 0, "Left": 0, "Width": 360, "Height": 640}]})
    e = api.error("ModifyCloudRecording", {"SdkAppId": APP_ID, "TaskId": task, "MixLayoutParams": {
        "MixLayoutMode": 4, "MixLayoutList": [{"Top": 0, "Left": 0, "Width": 361, "Height": 640}]}})
    assert e.code == "InvalidParameter.PresetLayoutConfig"
    api.delete(task)


def test_modify_layout_of_single_stream_task_is_refused(api):
    task = api.create(create_params(mode=1, room="20004"))
    e = api.error("ModifyCloudRecording", {"SdkAppId": APP_ID, "TaskId": task,
                                           "MixLayoutParams": {"MixLayoutMode": 3}})
    assert e.code == "InvalidParameter.NotSupportedForRecordMode", (e.code, e.message)
    assert "MixLayoutParams" in e.message
    # Subscription changes are fine for a single-stream task.
    api.modify(task, SubscribeStreamUserIds={"UnSubscribeAudioUserIds": ["noisy"]})
    assert api.describe(task)["Status"] == "Idle"
    api.delete(task)


@pytest.mark.parametrize("field", ["MixLayoutParams", "MixTranscodeParams"])
def test_mix_params_on_single_stream_create_are_refused(api, field):
    value = {"MixLayoutMode": 3} if field == "MixLayoutParams" else CANVAS_1280x720
    e = api.error("CreateCloudRecording", create_params(mode=1, **{field: value}))
    assert e.code == "InvalidParameter.NotSupportedForRecordMode"
    assert field in e.message


@pytest.mark.parametrize("room", ["room-a#1", "1234", "Room With Spaces", "a" * 64])
def test_string_room(api, room):
    task = api.create(create_params(room=room, RoomIdType=0))
    assert api.describe(task)["Status"] == "Idle"
    api.delete(task)


def test_integer_room_id_type_explicit(api):
    task = api.create(create_params(room="4294967294", RoomIdType=1))
    assert api.describe(task)["Status"] == "Idle"
    api.delete(task)


@pytest.mark.parametrize("vendor,region", [(0, "ap-shanghai"), (1, "us-east-1")])
def test_cloud_storage_is_accepted(api, vendor, region):
    params = create_params(StorageParams={"CloudStorage": {
        "Vendor": vendor, "Region": region, "Bucket": "recordings-1250000000", "AccessKey": "AKIDstorage",
        "SecretKey": "storage-secret", "FileNamePrefix": ["prefix1", "prefix_2-x"]}})
    task = api.create(params)
    d = api.describe(task)
    assert d["Status"] == "Idle"
    assert d["StorageFileList"] == []
    api.delete(task)


def test_cloud_vod_is_accepted(api):
    params = create_params(StorageParams={"CloudVod": {"TencentVod": {
        "Procedure": "proc", "ExpireTime": 86400, "StorageRegion": "ap-shanghai", "ClassId": 3,
        "SessionContext": "s", "SourceContext": "c", "MediaType": 0, "UserDefineRecordId": "my_rec-1"}}})
    task = api.create(params)
    assert api.describe(task)["Status"] == "Idle"
    api.delete(task)


def test_omitted_storage_params_are_accepted(api):
    params = create_params()
    assert "StorageParams" not in params
    task = api.create(params)
    assert api.describe(task)["Status"] == "Idle"
    api.delete(task)


def test_private_map_key_is_refused_clearly_not_ignored(api):
    """Room permission keys are not enforced by the appliance: a Create that
    carries one is refused with a message that says so (docs/api.md)."""
    e = api.error("CreateCloudRecording", create_params(room="20006", PrivateMapKey="pmk"))
    assert e.code == "InvalidParameterValue", e
    assert "PrivateMapKey" in e.message and "not supported" in e.message, e.message


def test_create_accepts_every_record_param_and_option_at_once(api):
    """Acceptance only: Create takes every RecordParams field and option
    together (each at a legal value) and the task runs. Describe has no field
    that echoes them (api-schema.md), so their effects are not checked here:
    StreamType/OutputFormat in test_storage (mp4/aac-only outputs),
    MaxMediaFileDuration in test_storage (the MP4 split), MaxIdleTime in
    test_persistence_callbacks (idle stop), SubscribeStreamUserIds in
    test_recording (subscriptions)."""
    params = create_params(room="20005", ResourceExpiredHour=6)
    params["RecordParams"] = {
        "RecordMode": 1, "MaxIdleTime": 86400, "StreamType": 1, "OutputFormat": 4, "AvMerge": 1,
        "MaxMediaFileDuration": 1440, "MediaId": 2, "FillType": 0, "SubscribeAbility": 1,
        "SubscribeStreamUserIds": {"SubscribeAudioUserIds": ["a", "b.*$"], "SubscribeVideoUserIds": ["c"]},
    }
    task = api.create(params)
    d = api.describe(task)
    assert d["TaskId"] == task and d["Status"] == "Idle", d
    assert d["StorageFileList"] == [], d
    assert api.delete(task)["TaskId"] == task
    api.wait_gone(task)


def test_dev_mode_without_apps_accepts_any_app_unsigned(kiroku):
    d = kiroku("dev", dev_mode=True, apps=[])
    # No signature at all.
    r = d.raw("CreateCloudRecording", create_params(app=1234567), sign=False).assert_envelope()
    assert r.code is None, r
    task = r.json["Response"]["TaskId"]
    r = d.raw("DescribeCloudRecording", {"SdkAppId": 1234567, "TaskId": task}, sign=False).assert_envelope()
    assert r.json["Response"]["Status"] == "Idle"
    # A signed SDK request works as well (the signature is simply not checked).
    api = d.sdk(secret_key="whatever")
    assert api.describe(task, app=1234567)["Status"] == "Idle"
    api.delete(task, app=1234567)


def test_dev_mode_with_apps_still_refuses_unknown_apps(kiroku):
    d = kiroku("devapps", dev_mode=True)
    r = d.raw("CreateCloudRecording", create_params(app=1234567), sign=False).assert_envelope()
    assert r.code == "FailedOperation.SdkAppIdNotExist", r
    r = d.raw("CreateCloudRecording", create_params(app=APP_ID), sign=False).assert_envelope()
    assert r.code is None, r


def test_authenticated_mode_needs_a_signature(daemon):
    r = daemon.raw("CreateCloudRecording", create_params(), sign=False).assert_envelope()
    assert r.code == "AuthFailure.InvalidAuthorization", r


@pytest.mark.parametrize("mode", ["HmacSHA256", "GET"])
def test_other_sdk_transports_get_a_clean_error(daemon, mode):
    """Only TC3-HMAC-SHA256 over POST is implemented; the SDK's legacy
    signature and GET modes get a Tencent error code, not a network error."""
    import json as _json

    from tencentcloud.common import credential
    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
    from tencentcloud.trtc.v20190722 import models, trtc_client

    from kiroku_e2e import SECRET_ID, SECRET_KEY, sdk_profile
    p = sdk_profile(daemon.port)
    if mode == "GET":
        p.httpProfile.reqMethod = "GET"
    else:
        p.signMethod = mode
    c = trtc_client.TrtcClient(credential.Credential(SECRET_ID, SECRET_KEY), "ap-shanghai", p)
    req = models.DescribeCloudRecordingRequest()
    req.from_json_string(_json.dumps({"SdkAppId": APP_ID, "TaskId": "abc"}))
    with pytest.raises(TencentCloudSDKException) as ei:
        c.DescribeCloudRecording(req)
    assert ei.value.code == "UnsupportedProtocol", ei.value
    assert "TC3-HMAC-SHA256" in ei.value.message, ei.value.message
