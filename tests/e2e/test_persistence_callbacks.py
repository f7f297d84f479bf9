"""Callbacks (spec §7), idle stop, replacement, persistence and the durable outbox."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from kiroku_e2e import APP_ID, APP_ID2, create_params, signed_headers, uniq, wait_until


def check_callback(cb, *, task: str, bot: str, room, event_type: int, payload: dict) -> None:
    """Every header and field of spec §7 for one delivered callback."""
    assert cb.sign_ok, f"Sign does not verify with the callback key: {cb.headers.get('sign')!r} for {cb.body!r}"
    assert cb.headers.get("content-type") == "application/json"
    assert cb.headers.get("sdkappid") == str(APP_ID)
    assert cb.headers["_path"] == "/cb"
    body = cb.json
    assert body["EventGroupId"] == 3
    assert body["EventType"] == event_type
    info = body["EventInfo"]
    assert info["TaskId"] == task
    assert info["UserId"] == bot
    assert info["RoomId"] == room and type(info["RoomId"]) is type(room), (info["RoomId"], room)
    assert info["Payload"] == payload
    now_ms = time.time() * 1000
    assert abs(body["CallbackTs"] - now_ms) < 120_000, body
    assert abs(info["EventMsTs"] - now_ms) < 120_000, body
    assert info["EventTs"] == info["EventMsTs"] // 1000


def test_start_and_stop_callbacks_in_order(kiroku, receiver):
    d = kiroku("cb", callback_url=receiver.url)
    api = d.sdk()
    bot = uniq("cb")
    task = api.create(create_params(user=bot, room="1234"))
    start = receiver.wait_event(task, 301, timeout=10)
    check_callback(start, task=task, bot=bot, room=1234, event_type=301, payload={"Status": 0})
    api.delete(task)
    # Single-stream tasks also start and stop their storage side: 303, 305.
    cbs = receiver.wait_for(task, 4, timeout=10)
    assert [c.event_type for c in cbs] == [301, 303, 302, 305]
    check_callback(cbs[1], task=task, bot=bot, room=1234, event_type=303, payload={"Status": 0})
    check_callback(cbs[2], task=task, bot=bot, room=1234, event_type=302, payload={"LeaveCode": 0})
    check_callback(cbs[3], task=task, bot=bot, room=1234, event_type=305, payload={"Status": 0})
    times = [c.json["EventInfo"]["EventMsTs"] for c in cbs]
    assert times == sorted(times)

    # A string room is reported as a string, even when it looks like a number.
    for room in ("5678", "room-x"):
        bot2 = uniq("cbs")
        t2 = api.create(create_params(user=bot2, room=room, RoomIdType=0))
        api.delete(t2)
        cbs = receiver.wait_for(t2, 4, timeout=10)
        assert [c.event_type for c in cbs] == [301, 303, 302, 305]
        for c, (ty, payload) in zip(cbs, [(301, {"Status": 0}), (303, {"Status": 0}), (302, {"LeaveCode": 0}),
                                          (305, {"Status": 0})]):
            check_callback(c, task=t2, bot=bot2, room=room, event_type=ty, payload=payload)

    # An app without callback_url sends nothing.
    t3 = api.create(create_params(app=APP_ID2))
    api.delete(t3, app=APP_ID2)
    time.sleep(0.5)
    assert receiver.delivered(t3) == []
    assert d.metric("kiroku_callbacks_delivered_total") == 12
    assert d.metric("kiroku_callbacks_queued_total") == 12
    assert d.metric("kiroku_callbacks_pending") == 0


def test_callbacks_are_retried_in_order(kiroku, receiver):
    receiver.status = 500
    d = kiroku("retry", callback_url=receiver.url)
    api = d.sdk()
    bot = uniq("rt")
    task = api.create(create_params(user=bot))
    api.delete(task)  # 302 is queued behind the undelivered 301
    # Two refused attempts of 301 (t = 0 s and ~1 s)...
    wait_until(lambda: len([c for c in receiver.calls if c.task_id == task]) >= 2, 8, what="two attempts")
    assert d.metric("kiroku_callbacks_retried_total") >= 1
    wait_until(lambda: d.metric("kiroku_callbacks_pending") == 4, 5, what="301, 303, 302, 305 queued")
    receiver.status = 200
    # ...then the third (~2 s later: the backoff doubles) is accepted.
    cb = receiver.wait_event(task, 301, timeout=10)
    attempts = [c for c in receiver.calls if c.task_id == task and c.event_type == 301]
    assert len(attempts) == 3, attempts
    assert all(c.body == attempts[0].body for c in attempts), "a retry must resend the same bytes"
    assert all(c.sign_ok for c in attempts)
    assert attempts[2] is cb
    gap1 = attempts[1].received_at - attempts[0].received_at
    gap2 = attempts[2].received_at - attempts[1].received_at
    assert 0.7 <= gap1 <= 2.0, f"first retry after {gap1:.2f} s, expected ~1 s"
    assert 1.7 <= gap2 <= 3.5, f"second retry after {gap2:.2f} s, expected ~2 s"
    # The 302 was queued behind the undelivered 301 and never overtook it.
    calls = list(receiver.calls)
    assert all(i > calls.index(cb) for i, c in enumerate(calls) if c.task_id == task and c.event_type == 302)

    cbs = receiver.wait_for(task, 4, timeout=10)
    assert [c.event_type for c in cbs] == [301, 303, 302, 305]
    assert all(c.sign_ok for c in cbs)
    assert cbs[2].payload == {"LeaveCode": 0}
    wait_until(lambda: d.metric("kiroku_callbacks_pending") == 0, 5, what="empty outbox")
    assert d.metric("kiroku_callbacks_delivered_total") == 4


def test_idle_stop_after_max_idle_time(kiroku, receiver):
    d = kiroku("idle", callback_url=receiver.url)
    api = d.sdk()
    bot = uniq("idle")
    created = time.time()
    task = api.create(create_params(user=bot, room="4321", max_idle=5))
    keeper = api.create(create_params(room="4321", max_idle=60))
    assert api.describe(task)["Status"] == "Idle"
    stop = receiver.wait_event(task, 302, timeout=12)
    waited = stop.received_at - created
    assert 4.5 <= waited <= 9.0, f"idle stop after {waited:.2f} s, MaxIdleTime is 5 s"
    check_callback(stop, task=task, bot=bot, room=4321, event_type=302, payload={"LeaveCode": 99})
    receiver.wait_event(task, 305, timeout=5)
    assert [c.event_type for c in receiver.delivered(task)] == [301, 303, 302, 305]
    api.wait_gone(task, timeout=3)
    assert d.metric("kiroku_tasks_stopped_total", {"reason": "idle"}) == 1
    # The other task in the same room keeps running.
    assert api.describe(keeper)["Status"] == "Idle"


def test_same_user_id_replaces_the_old_task(kiroku, receiver):
    d = kiroku("replace", callback_url=receiver.url)
    api = d.sdk()
    bot = uniq("dup")
    old = api.create(create_params(user=bot, room="777"))
    other_room = api.create(create_params(user=bot, room="778"))
    other_app = api.create(create_params(app=APP_ID2, user=bot, room="777"))
    new = api.create(create_params(user=bot, room="777"))
    assert new != old
    stop = receiver.wait_event(old, 302, timeout=10)
    check_callback(stop, task=old, bot=bot, room=777, event_type=302, payload={"LeaveCode": 101})
    api.wait_gone(old)
    assert api.describe(new)["Status"] == "Idle"
    assert receiver.wait_event(new, 301, timeout=10).payload == {"Status": 0}
    # Same bot in another room, or in another app, is someone else.
    assert api.describe(other_room)["Status"] == "Idle"
    assert api.describe(other_app, app=APP_ID2)["Status"] == "Idle"
    time.sleep(0.3)
    assert [c.event_type for c in receiver.delivered(other_room)] == [301, 303]
    # The old task stopped before the new one started (delivery order across
    # tasks is not promised, only per task; the event times tell the order).
    new_start = receiver.wait_event(new, 301, timeout=10)
    assert stop.json["EventInfo"]["EventMsTs"] <= new_start.json["EventInfo"]["EventMsTs"]
    assert d.metric("kiroku_tasks_stopped_total", {"reason": "same_user_id"}) == 1


def test_tasks_survive_kill9(kiroku, receiver):
    d = kiroku("persist", callback_url=receiver.url)
    api = d.sdk()
    a = api.create(create_params(room="1001", max_idle=60))
    b = api.create(create_params(room="str-room", RoomIdType=0, max_idle=60, mode=2))
    gone = api.create(create_params(room="1002", max_idle=60))
    short = api.create(create_params(room="1003", max_idle=6))
    api.delete(gone)
    api.wait_gone(gone)
    api.modify(b, MixLayoutParams={"MixLayoutMode": 4, "MixLayoutList": [
        {"Top": 0, "Left": 0, "Width": 360, "Height": 640}]})
    for t in (a, b, short):
        receiver.wait_event(t, 301, timeout=10)
    time.sleep(2.0)
    # Committed (fsync) before the answer: killed right after its Create, it survives.
    late = api.create(create_params(app=APP_ID2, room="1004", max_idle=60))
    d.kill9()
    restarted = time.time()
    d.start()
    api = d.sdk()
    for t, app in ((a, APP_ID), (b, APP_ID), (short, APP_ID), (late, APP_ID2)):
        r = api.describe(t, app)
        assert r["TaskId"] == t and r["Status"] == "Idle"
    assert api.describe_error(gone).code == "FailedOperation.TaskNotExist"
    # The restored mixed task kept its settings: still a mixed-mode task.
    api.modify(b, MixLayoutParams={"MixLayoutMode": 3})
    assert d.metric("kiroku_tasks", {"state": "idle"}) == 4
    # The idle timer restarted at the restart: the 6 s task stops ~6 s after it.
    stop = receiver.wait_event(short, 302, timeout=12)
    after = stop.received_at - restarted
    assert after >= 5.0, f"idle stop {after:.2f} s after the restart: the timer did not restart"
    assert stop.payload == {"LeaveCode": 99}
    # Nothing was lost and no task got a second 301: the restored task resumed
    # (306, FAILOVER) with a new recorder (303); its files will carry "ha1_".
    wait_until(lambda: len(receiver.delivered(a)) >= 4, 5, what="306 and 303 after the restart")
    assert [c.event_type for c in receiver.delivered(a)] == [301, 303, 306, 303]
    assert receiver.delivered(a)[2].payload == {"Status": 0}
    assert api.describe(a)["Status"] == "Idle"


def test_durable_outbox_survives_kill9(kiroku, make_receiver):
    receiver = make_receiver(start=False)  # the port is reserved, nobody listens: connection refused
    d = kiroku("outbox", callback_url=receiver.url)
    api = d.sdk()
    bot = uniq("dur")
    task = api.create(create_params(user=bot, room="2468", max_idle=60))
    wait_until(lambda: d.metric("kiroku_callbacks_retried_total") >= 1, 6, what="a failed delivery attempt")
    wait_until(lambda: d.metric("kiroku_callbacks_pending") == 2, 5, what="301 and 303 pending")
    assert d.metric("kiroku_callbacks_delivered_total") == 0
    d.kill9()
    receiver.start()
    d.start()
    cb = receiver.wait_event(task, 301, timeout=15)
    check_callback(cb, task=task, bot=bot, room=2468, event_type=301, payload={"Status": 0})
    wait_until(lambda: d.metric("kiroku_callbacks_delivered_total") >= 2, 5, what="delivered_total")
    wait_until(lambda: d.metric("kiroku_callbacks_pending") == 0, 5, what="empty outbox")
    assert d.sdk().describe(task)["Status"] == "Idle"
    # Each is delivered once more at most (at-least-once), never lost; the
    # resumed task adds 306 and a new 303.
    wait_until(lambda: len(receiver.delivered(task)) >= 4, 5, what="all four callbacks")
    assert [c.event_type for c in receiver.delivered(task)] == [301, 303, 306, 303]


def test_sigterm_exits_0_and_keeps_live_tasks(kiroku, receiver):
    d = kiroku("term", callback_url=receiver.url)
    api = d.sdk()
    task = api.create(create_params(room="1357", max_idle=60))
    receiver.wait_event(task, 301, timeout=10)
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 10
    log = d.log_text()
    assert "SIGTERM" in log
    # A graceful stop is not a task stop: no 302 (and no 305).
    assert [c.event_type for c in receiver.delivered(task)] == [301, 303]
    d.start()
    assert d.sdk().describe(task)["Status"] == "Idle"
    api = d.sdk()
    api.delete(task)
    assert receiver.wait_event(task, 302, timeout=10).payload == {"LeaveCode": 0}


def test_callback_given_up_after_retry_for_seconds(kiroku, receiver):
    receiver.status = 503
    d = kiroku("giveup", callback_url=receiver.url, callbacks={"retry_for_seconds": 2})
    api = d.sdk()
    task = api.create(create_params(room="9753"))
    # Attempts at ~0 s and ~1 s; the next (~3 s) would be past 2 s: given up,
    # for 301 and for the 303 queued behind it.
    wait_until(lambda: d.metric("kiroku_callbacks_given_up_total") == 2, 8, what="given_up_total")
    wait_until(lambda: d.metric("kiroku_callbacks_pending") == 0, 3, what="empty outbox")
    assert 1 <= len([c for c in receiver.calls if c.task_id == task and c.event_type == 301]) <= 3
    # The queue of that task moves on: the 302 (and 305) are delivered normally.
    receiver.status = 200
    api.delete(task)
    cb = receiver.wait_event(task, 302, timeout=10)
    assert cb.payload == {"LeaveCode": 0} and cb.sign_ok
    receiver.wait_event(task, 305, timeout=10)
    assert [c.event_type for c in receiver.delivered(task)] == [302, 305]
    assert "given up" in d.log_text()


def test_second_daemon_on_the_same_data_dir_is_refused(kiroku):
    first = kiroku("first")
    task = first.sdk().create(create_params())
    second = kiroku("second", start=False, data_dir=Path(first.config["data_dir"]))
    second.start(wait=False)
    assert second.proc.wait(10) != 0
    assert "state store" in second.log_text()
    # The first one is unaffected.
    assert first.sdk().describe(task)["Status"] == "Idle"


def test_hung_receiver_times_out_and_sigterm_does_not_wait_for_it(kiroku, receiver):
    receiver.delay = 4.0  # longer than callbacks.timeout_seconds = 1
    d = kiroku("hung", callback_url=receiver.url, callbacks={"timeout_seconds": 1})
    api = d.sdk()
    task = api.create(create_params(room="8642"))
    wait_until(lambda: [c for c in receiver.calls if c.task_id == task], 5, what="first attempt")
    receiver.delay = 0
    cb = receiver.wait_event(task, 301, timeout=10)
    attempts = [c for c in receiver.calls if c.task_id == task]
    gap = cb.received_at - attempts[0].received_at
    # timeout (1 s) + first backoff (1 s)
    assert 1.7 <= gap <= 4.0, f"retry {gap:.2f} s after a hung attempt"
    assert d.metric("kiroku_callbacks_retried_total") >= 1

    # A callback stuck in flight does not hold up a graceful stop, and is not lost.
    receiver.delay = 30.0
    api.delete(task)
    wait_until(lambda: [c for c in receiver.calls if c.task_id == task and c.event_type == 302], 5,
               what="302 attempt")
    t0 = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - t0 < 5, "SIGTERM waited for a hung callback"
    receiver.delay = 0
    d.start()
    assert receiver.wait_event(task, 302, timeout=10).payload == {"LeaveCode": 0}
    wait_until(lambda: d.metric("kiroku_callbacks_pending") == 0, 5, what="empty outbox")


def test_sigterm_with_a_request_in_flight_exits_0_after_the_grace(kiroku):
    d = kiroku("grace", server={"shutdown_grace_seconds": 1})
    api = d.sdk()
    task = api.create(create_params())
    body = b'{"SdkAppId": 1400000001, "TaskId": "abc"}'
    h = signed_headers(d.host, "DescribeCloudRecording", body)
    head = "POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    with socket.create_connection(("127.0.0.1", d.port)) as s:
        # Headers and half a body: a request that never completes.
        s.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        time.sleep(0.2)
        t0 = time.monotonic()
        assert d.stop() == 0
        took = time.monotonic() - t0
    assert 0.8 <= took < 5, f"stopped {took:.2f} s after SIGTERM with shutdown_grace_seconds = 1"
    assert "grace" in d.log_text()
    d.start()
    assert d.sdk().describe(task)["Status"] == "Idle"
