"""Tencent's unmodified Node.js SDK (npm `tencentcloud-sdk-nodejs`) against the
box, addressed by IP and port as a user would write it.

The SDK signs for the credential-scope service of the endpoint's first DNS
label (`127` here) and signs the host without its port; both used to lock it
out (AuthFailure.SignatureFailure on every call). tests/run-all.sh installs the
pinned SDK into tests/e2e/node with `npm ci`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kiroku_e2e import APP_ID, SECRET_ID, SECRET_KEY, create_params

NODE_DIR = Path(__file__).resolve().parent / "node"


def node_calls(daemon, calls: list, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY) -> list[dict]:
    node = shutil.which("node")
    assert node, "node is not installed (tests/run-all.sh installs it)"
    assert (NODE_DIR / "node_modules" / "tencentcloud-sdk-nodejs").is_dir(), \
        "tests/e2e/node has no SDK: run `npm ci --prefix tests/e2e/node` (tests/run-all.sh does)"
    r = subprocess.run(
        [node, str(NODE_DIR / "trtc_calls.js"), f"127.0.0.1:{daemon.port}", secret_id, secret_key,
         json.dumps(calls)],
        capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == len(calls), r.stdout + r.stderr
    return lines


def ok(result: dict) -> dict:
    assert "ok" in result, result
    return result["ok"]


def code(result: dict) -> str:
    assert "error" in result, f"expected an error: {result}"
    return result["error"]["code"]


def test_the_whole_lifecycle_through_the_nodejs_sdk(daemon):
    params = create_params(room="7001", RecordParams={"RecordMode": 1, "MaxIdleTime": 30})
    out = node_calls(daemon, [
        ["CreateCloudRecording", params],
        ["DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "$TASK"}],
        ["ModifyCloudRecording", {"SdkAppId": APP_ID, "TaskId": "$TASK",
                                  "SubscribeStreamUserIds": {"SubscribeAudioUserIds": ["alice"]}}],
        ["DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "$TASK"}],
        ["DeleteCloudRecording", {"SdkAppId": APP_ID, "TaskId": "$TASK"}],
    ])
    task = ok(out[0])["TaskId"]
    assert len(task) >= 16 and ok(out[0])["RequestId"]
    described = ok(out[1])
    assert described["TaskId"] == task and described["Status"] in ("Idle", "InProgress"), described
    assert ok(out[2])["TaskId"] == task
    assert ok(out[3])["TaskId"] == task
    assert ok(out[4])["TaskId"] == task
    # The Python SDK agrees on what the Node.js SDK did.
    daemon.sdk().wait_gone(task)


def test_one_error_of_each_family_through_the_nodejs_sdk(daemon):
    no_user = create_params(room="7002")
    del no_user["UserId"]
    out = node_calls(daemon, [
        ["CreateCloudRecording", no_user],
        ["CreateCloudRecording", create_params(room="7003", RecordParams={"RecordMode": 9})],
        ["DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "0" * 32}],
        ["CreateCloudRecording", create_params(app=1400999999, room="7004")],
    ])
    assert code(out[0]) == "MissingParameter.UserId"
    assert "UserId" in out[0]["error"]["message"]
    assert code(out[1]).startswith("InvalidParameter"), out[1]
    assert "RecordMode" in out[1]["error"]["message"]
    assert code(out[2]) == "FailedOperation.TaskNotExist"
    assert code(out[3]) == "FailedOperation.SdkAppIdNotExist"


def test_auth_failures_through_the_nodejs_sdk(daemon):
    describe = [["DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "0" * 32}]]
    wrong_key = node_calls(daemon, describe, secret_key="not-the-key")
    assert code(wrong_key[0]) == "AuthFailure.SignatureFailure", wrong_key
    unknown_id = node_calls(daemon, describe, secret_id="AKIDnobodyHasThisId0000")
    # Not told apart from a wrong key (docs/security.md).
    assert code(unknown_id[0]) == "AuthFailure.SignatureFailure", unknown_id


@pytest.mark.parametrize("services,accepted", [(["trtc"], False), (["127", "trtc"], True)])
def test_pinned_services_apply_to_the_nodejs_sdk(kiroku, services, accepted):
    d = kiroku("pinned", server={"signed_services": services})
    out = node_calls(d, [["DescribeCloudRecording", {"SdkAppId": APP_ID, "TaskId": "0" * 32}]])
    if accepted:
        assert code(out[0]) == "FailedOperation.TaskNotExist", out
    else:
        assert code(out[0]) == "AuthFailure.SignatureFailure", out
        assert "signed_services" in out[0]["error"]["message"]
