"""limits.max_tasks and limits.api_rate_per_second."""

from __future__ import annotations

import threading
import time

from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from kiroku_e2e import APP_ID, APP_ID2, create_params, uniq


def test_max_tasks(kiroku):
    d = kiroku("maxtasks", limits={"max_tasks": 3, "api_rate_per_second": 1000})
    api = d.sdk()
    bots = [uniq("cap") for _ in range(3)]
    tasks = [api.create(create_params(user=b, room="30001")) for b in bots]
    # Tasks of every app count towards the one appliance-wide limit.
    e = api.error("CreateCloudRecording", create_params(app=APP_ID2, room="30001"))
    assert e.code == "FailedOperation.RestrictedConcurrency", (e.code, e.message)
    assert "max_tasks" in e.message
    e = api.error("CreateCloudRecording", create_params(room="30002"))
    assert e.code == "FailedOperation.RestrictedConcurrency"
    assert d.metric("kiroku_tasks", {"state": "idle"}) == 3

    # Replacing a task (same bot UserId in the same room) does not need a new slot.
    replacement = api.create(create_params(user=bots[0], room="30001"))
    api.wait_gone(tasks[0])
    tasks[0] = replacement

    # After a Delete there is room again (an Exited task no longer counts,
    # even while its files are finished: test_density.py checks the race).
    api.delete(tasks[1])
    api.wait_gone(tasks[1])
    t = api.create(create_params(room="30003"))
    assert api.describe(t)["Status"] == "Idle"
    e = api.error("CreateCloudRecording", create_params(room="30004"))
    assert e.code == "FailedOperation.RestrictedConcurrency"
    assert d.metric("kiroku_tasks", {"state": "idle"}) == 3
    assert d.metric("kiroku_tasks", {"state": "exited"}) == 0
    assert d.metric("kiroku_api_requests_total", {"action": "CreateCloudRecording",
                                                  "code": "FailedOperation.RestrictedConcurrency"}) == 3


def _burst(api, n, app=APP_ID):
    codes = []
    for _ in range(n):
        e = api.describe_error("00000000000000000000000000000000", app=app)
        codes.append(e.code)
    return codes


def test_api_rate_limit(kiroku):
    d = kiroku("rate", limits={"api_rate_per_second": 2, "max_tasks": 100})
    api = d.sdk()
    t0 = time.monotonic()
    codes = _burst(api, 6)
    elapsed = time.monotonic() - t0
    limited = codes.count("RequestLimitExceeded")
    # Two tokens to start with, two more per second: in a quick burst of six,
    # at least three must be refused (allowing for refill during the burst).
    assert codes[:2] == ["FailedOperation.TaskNotExist"] * 2, codes
    assert limited >= 6 - 2 - int(elapsed * 2) - 1 and limited >= 1, (codes, elapsed)
    assert set(codes) <= {"FailedOperation.TaskNotExist", "RequestLimitExceeded"}, codes

    # Another action of the same app is not affected (two each: the full bucket)...
    task = api.create(create_params())
    task2 = api.create(create_params())
    # ...nor the same action for another app.
    assert _burst(api, 2, app=APP_ID2) == ["FailedOperation.TaskNotExist"] * 2
    e = api.error("ModifyCloudRecording", {"SdkAppId": APP_ID2, "TaskId": task})
    assert e.code == "FailedOperation.TaskNotExist"

    # Describe of the first app is still limited (unless this machine is so
    # slow that a token has accrued since the burst).
    try:
        api.describe(task)
        assert time.monotonic() - t0 >= 0.5, "a Describe was served although the bucket was empty"
    except TencentCloudSDKException as e:
        assert e.code == "RequestLimitExceeded", (e.code, e.message)
        assert "DescribeCloudRecording" in e.message and str(APP_ID) in e.message

    # The bucket refills: after a second, requests are served again.
    time.sleep(1.1)
    assert api.describe(task)["Status"] == "Idle"
    api.delete(task)
    api.delete(task2)
    assert d.metric("kiroku_api_requests_total", {"action": "DescribeCloudRecording",
                                                  "code": "RequestLimitExceeded"}) >= limited


def _parallel(fn, n):
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            results[i] = ("ok", fn(i))
        except TencentCloudSDKException as e:
            results[i] = ("err", e.code)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_max_tasks_under_concurrent_creates(kiroku):
    d = kiroku("maxpar", limits={"max_tasks": 3, "api_rate_per_second": 1000})
    clients = [d.sdk() for _ in range(8)]
    results = _parallel(lambda i: clients[i].create(create_params(room=str(40000 + i))), 8)
    ok = [r[1] for r in results if r[0] == "ok"]
    errs = [r[1] for r in results if r[0] == "err"]
    assert len(ok) == 3, results
    assert errs == ["FailedOperation.RestrictedConcurrency"] * 5, results
    assert d.metric("kiroku_tasks", {"state": "idle"}) == 3


def test_concurrent_creates_for_the_same_bot_leave_one_task(kiroku):
    d = kiroku("samepar", limits={"max_tasks": 100, "api_rate_per_second": 1000})
    clients = [d.sdk() for _ in range(6)]
    bot = uniq("same")
    results = _parallel(lambda i: clients[i].create(create_params(user=bot, room="50000")), 6)
    assert all(r[0] == "ok" for r in results), results
    tasks = [r[1] for r in results]
    assert len(set(tasks)) == 6
    api = d.sdk()
    live = []
    for t in tasks:
        try:
            if api.describe(t)["Status"] == "Idle":
                live.append(t)
        except TencentCloudSDKException as e:
            assert e.code == "FailedOperation.TaskNotExist"
    assert len(live) == 1, live
    assert d.metric("kiroku_tasks_stopped_total", {"reason": "same_user_id"}) == 5
