"""Fleet mode, part one (issue 17): the state store on PostgreSQL.

With `[cluster] postgres_url` a box keeps its tasks, their callbacks and
the records set aside in PostgreSQL instead of `data_dir/state.redb`: the
schema is migrated at start, Tencent's SDK drives the task lifecycle, psql
sees the rows, a restart resumes from the database, and a database that
goes away and comes back costs errors while it is away, never a hang.
(Leases, placement, redirects and failover across boxes come next.)"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import requests
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from kiroku_e2e import ADMIN_HEADERS, APP_ID, create_params, metric_value, wait_until

pytest.importorskip("aiortc", reason="pip install -r tests/e2e/requirements.txt (aiortc)")
from independent_publisher import Publisher, whip_url  # noqa: E402


def fleet_box(kiroku, pg, name: str, receiver=None, **kw):
    url = pg.create_db(name)
    return kiroku(name, callback_url=receiver.url if receiver else None,
                  cluster={"postgres_url": url, "node_id": f"box-{name}"}, **kw), url


def test_tasks_and_callbacks_live_in_postgresql(kiroku, pg, receiver):
    d, _ = fleet_box(kiroku, pg, "fleet_lifecycle", receiver)
    db = "fleet_lifecycle"
    assert pg.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM kiroku_schema", db) == "1,2,3,4,5,6,7"
    assert not (Path(d.config["data_dir"]) / "state.redb").exists(), "no embedded store in fleet mode"
    assert "postgres://postgres@127.0.0.1" in d.log_text() and "box-fleet_lifecycle" in d.log_text()
    api = d.sdk()
    task = api.create(create_params(room="9701", max_idle=3600))
    assert pg.psql(f"SELECT count(*) FROM tasks WHERE task_id = '{task}'", db) == "1"
    value = pg.psql(f"SELECT convert_from(value, 'UTF8') FROM tasks WHERE task_id = '{task}'", db)
    assert f'"task_id":"{task}"' in value, value[:200]
    assert pg.psql(f"SELECT node_id FROM tasks WHERE task_id = '{task}'", db) == "box-fleet_lifecycle"

    # A restart resumes the task from the database.
    d.restart()
    assert api.describe(task)["TaskId"] == task

    api.delete(task)
    receiver.wait_event(task, 302, 30)
    wait_until(lambda: pg.psql(f"SELECT count(*) FROM outbox WHERE task_id = '{task}'", db) == "0",
               20, 0.2, "every callback delivered and removed from the outbox")
    types = [c.event_type for c in receiver.delivered(task)]
    assert types[0] == 301 and 302 in types, types
    wait_until(lambda: pg.psql(f"SELECT count(*) FROM tasks WHERE task_id = '{task}'", db) == "0",
               20, 0.2, "the ended task's row removed")


def test_callbacks_queued_in_postgresql_survive_a_restart(kiroku, pg, make_receiver):
    """Callbacks that could not be delivered stay in the outbox table and go
    out, in order, after a restart once the receiver is up."""
    receiver = make_receiver(start=False)
    d, _ = fleet_box(kiroku, pg, "fleet_outbox", receiver)
    db = "fleet_outbox"
    api = d.sdk()
    task = api.create(create_params(room="9702", max_idle=3600))
    api.delete(task)
    wait_until(lambda: int(pg.psql(f"SELECT count(*) FROM outbox WHERE task_id = '{task}'", db)) >= 2,
               20, 0.2, "301 and 302 waiting in the outbox")
    queued = pg.psql(f"SELECT event_type FROM outbox WHERE task_id = '{task}' ORDER BY seq", db).split()
    d.stop()
    receiver.start()
    d.start()
    wait_until(lambda: len(receiver.delivered(task)) >= len(queued), 60, 0.2, "every queued callback delivered")
    types = [c.event_type for c in receiver.delivered(task)]
    assert [str(t) for t in types[:len(queued)]] == queued, (types, queued)
    wait_until(lambda: pg.psql(f"SELECT count(*) FROM outbox WHERE task_id = '{task}'", db) == "0",
               20, 0.2, "the outbox emptied")


def test_postgresql_going_away_costs_errors_never_a_hang(kiroku, pg):
    """PostgreSQL stopped under a running box: an API call that must write
    answers an InternalError within seconds (never hangs), calls that only
    read go on, and once the database is back the box writes again without
    a restart."""
    d, _ = fleet_box(kiroku, pg, "fleet_outage")
    api = d.sdk()
    before = api.create(create_params(room="9703", max_idle=3600))
    pg.stop()
    try:
        started = time.monotonic()
        with pytest.raises(TencentCloudSDKException) as failed:
            api.create(create_params(room="9704", max_idle=3600))
        took = time.monotonic() - started
        assert took < 8, f"the refused Create took {took:.1f} s"
        assert failed.value.get_code().startswith("InternalError"), failed.value
        assert "retry" in failed.value.get_message(), failed.value
        assert api.describe(before)["TaskId"] == before
        assert d.running
    finally:
        pg.start()
    after = api.create(create_params(room="9705", max_idle=3600))
    assert api.describe(after)["TaskId"] == after
    assert pg.psql(f"SELECT count(*) FROM tasks WHERE task_id IN ('{before}', '{after}')", "fleet_outage") == "2"
    api.delete(before)
    api.delete(after)


def test_a_schema_newer_than_the_binary_is_refused(kiroku, pg):
    d, _ = fleet_box(kiroku, pg, "fleet_schema")
    d.stop()
    pg.psql("INSERT INTO kiroku_schema (version) VALUES (999)", "fleet_schema")
    with pytest.raises(AssertionError) as refused:
        d.start(timeout=10)
    assert "version 999" in str(refused.value), str(refused.value)[-1500:]
    pg.psql("DELETE FROM kiroku_schema WHERE version = 999", "fleet_schema")
    d.start()


def room_users(d, room: int) -> list[str]:
    r = requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 200, r.text
    return sorted(u["user_id"] for rm in r.json()["rooms"] if str(rm["room_id"]) == str(room)
                  for u in rm["users"])


def test_three_boxes_one_owner_per_room_and_whip_redirected_to_it(kiroku, pg):
    """Three boxes on one database register and heartbeat; the first box a
    publisher reaches claims the room (epoch 1); an offer to another box
    for that room is answered 307 to the owner's same URL and a real
    publisher following it lands there; once the owner is killed and its
    lease (4 s) has lapsed, the next offer's box takes the room over with
    the epoch raised."""
    db = "fleet_three"
    url = pg.create_db(db)
    boxes = [kiroku(f"fleet3-{i}", cluster={"postgres_url": url, "node_id": f"box{i}", "lease_seconds": 4})
             for i in range(3)]
    alive = "SELECT string_agg(node_id, ',' ORDER BY node_id) FROM nodes WHERE heartbeat_at > now() - interval '4 seconds'"
    wait_until(lambda: pg.psql(alive, db) == "box0,box1,box2", 10, 0.2, "three boxes registered and alive")
    heartbeats = pg.psql("SELECT heartbeat_at FROM nodes WHERE node_id = 'box1'", db)
    time.sleep(1.2)
    assert pg.psql("SELECT heartbeat_at FROM nodes WHERE node_id = 'box1'", db) != heartbeats, "heartbeats renew"

    room = 9801
    owner_sql = f"SELECT owner || '|' || epoch FROM rooms WHERE room_id = '{room}'"
    publishers = []
    try:
        publishers.append(Publisher(whip_url(boxes[0].url, APP_ID, room, "ann"), fps=10).start(timeout=15))
        assert pg.psql(owner_sql, db) == "box0|1"

        r = requests.post(whip_url(boxes[1].url, APP_ID, room, "ben"), data=b"v=0\r\n",
                          headers={"Content-Type": "application/sdp"}, allow_redirects=False, timeout=10)
        assert r.status_code == 307, (r.status_code, r.text)
        assert r.headers["Location"] == whip_url(boxes[0].url, APP_ID, room, "ben"), r.headers
        assert "box0" in r.text

        publishers.append(Publisher(whip_url(boxes[2].url, APP_ID, room, "cat"), fps=10).start(timeout=15))
        wait_until(lambda: room_users(boxes[0], room) == ["ann", "cat"], 10, 0.2,
                   "both publishers on the room's owner")
        assert room_users(boxes[2], room) == []
        assert metric_value(boxes[2].metrics_text(), "kiroku_whip_offers_redirected_total") == 1

        boxes[0].kill9()
        started = time.monotonic()
        # Until the dead owner's lease lapses the room stays its: 307 to it.
        r = requests.post(whip_url(boxes[1].url, APP_ID, room, "dan"), data=b"v=0\r\n",
                          headers={"Content-Type": "application/sdp"}, allow_redirects=False, timeout=10)
        assert r.status_code == 307, (r.status_code, r.text)
        wait_until(lambda: pg.psql(f"SELECT count(*) FROM nodes WHERE node_id = 'box0' AND "
                                   f"heartbeat_at > now() - interval '4 seconds'", db) == "0",
                   10, 0.2, "box0's lease lapsed")
        publishers.append(Publisher(whip_url(boxes[1].url, APP_ID, room, "dan"), fps=10).start(timeout=15))
        took = time.monotonic() - started
        assert pg.psql(owner_sql, db) == "box1|2", "taken over with the epoch raised"
        assert room_users(boxes[1], room) == ["dan"]
        assert took < 15, f"the room was taken over {took:.1f} s after the kill"
    finally:
        for p in publishers:
            if p is not None:
                p.stop()


def test_boxes_sharing_a_database_resume_only_their_own_tasks(kiroku, pg):
    """Two boxes on one database each create a task; after both restart,
    each has resumed its own task and not the other's (each runs one task;
    the rows keep their owners), and each box still answers Describe for
    the other's task by relaying it to its owner."""
    db = "fleet_own"
    url = pg.create_db(db)
    a = kiroku("own-a", cluster={"postgres_url": url, "node_id": "own-a"})
    b = kiroku("own-b", cluster={"postgres_url": url, "node_id": "own-b"})
    ta = a.sdk().create(create_params(room="9811", max_idle=3600))
    assert pg.psql(f"SELECT node_id FROM tasks WHERE task_id = '{ta}'", db) == "own-a"
    # Placement: b has the most room left now (a runs one task), so a
    # Create sent to a for a new room goes to b.
    tb = a.sdk().create(create_params(room="9812", max_idle=3600))
    assert pg.psql(f"SELECT node_id FROM tasks WHERE task_id = '{tb}'", db) == "own-b"
    a.restart()
    b.restart()
    for box in (a, b):
        wait_until(lambda: metric_value(box.metrics_text(), "kiroku_tasks", {"state": "idle"}) == 1, 10, 0.2,
                   f"{box.name} runs exactly its own task")
    for box in (a, b):
        assert box.sdk().describe(ta)["TaskId"] == ta
        assert box.sdk().describe(tb)["TaskId"] == tb
    assert metric_value(a.metrics_text(), "kiroku_api_relayed_total",
                        {"action": "DescribeCloudRecording"}) == 1
    assert pg.psql("SELECT string_agg(node_id, ',' ORDER BY node_id) FROM tasks", db) == "own-a,own-b"


def test_a_reconnecting_publisher_follows_its_room_to_the_next_box(kiroku, pg):
    """`kiroku publish --reconnect` pointed at one box (as a load balancer
    address would be) is redirected to the room's owner; when the owner is
    killed the session fails, the publisher publishes again with backoff,
    is redirected to the dead owner until its lease lapses, then lands on
    the box that takes the room over, within 15 s of the kill."""
    from recording import publish, publish_report
    db = "fleet_reconnect"
    url = pg.create_db(db)
    a = kiroku("rc-a", cluster={"postgres_url": url, "node_id": "rc-a", "lease_seconds": 4})
    b = kiroku("rc-b", cluster={"postgres_url": url, "node_id": "rc-b", "lease_seconds": 4})
    room = 9821
    # Box a claims the room (the claim comes before the offer is read).
    requests.post(whip_url(a.url, APP_ID, room, "claim"), data=b"v=0\r\n",
                  headers={"Content-Type": "application/sdp"}, timeout=10)
    assert pg.psql(f"SELECT owner FROM rooms WHERE room_id = '{room}'", db) == "rc-a"
    p = publish(b, room, "eve", "--reconnect", "--fps", "10", duration=30)
    try:
        wait_until(lambda: room_users(a, room) == ["eve"], 15, 0.2, "the publisher on the owner, via box b")
        a.kill9()
        killed = time.monotonic()
        try:
            wait_until(lambda: room_users(b, room) == ["eve"], 20, 0.2, "the publisher again, on box b")
        except AssertionError:
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=30)
            raise AssertionError(f"kiroku publish said:\n{err[-3000:]}")
        took = time.monotonic() - killed
        assert took < 15, f"publishing again took {took:.1f} s"
        assert pg.psql(f"SELECT owner || '|' || epoch FROM rooms WHERE room_id = '{room}'", db) == "rc-b|2"
    finally:
        p.send_signal(signal.SIGINT)  # kiroku publish ends and reports on Ctrl-C
    out, err = p.communicate(timeout=30)
    lines = [l for l in out.strip().splitlines() if l.startswith("{")]
    assert lines, err[-2000:]
    report = json.loads(lines[-1])
    assert report["reconnects"] >= 1, report
    print(f"reconnect: on box b {took:.1f} s after the kill; report {report}")


def test_a_dead_boxs_recording_resumes_on_another_box(kiroku, pg, receiver):
    """A task records on box a; a Create for the same room sent to box b is
    relayed to a (the room's owner) and deleted again through b. `kill -9`
    of a: once a's lease (4 s) lapses, b takes
    the room over (epoch 2) and the task with it, resumes it as `ha1_` with
    a signed 306, and the publisher (`--reconnect`, pointed at b) records
    on b again; the whole takeover within 15 s of the kill."""
    from recording import publish, task_files
    db = "fleet_failover"
    url = pg.create_db(db)
    boxes = {n: kiroku(f"fo-{n}", callback_url=receiver.url,
                       cluster={"postgres_url": url, "node_id": f"fo-{n}", "lease_seconds": 4})
             for n in ("a", "b")}
    a, b = boxes["a"], boxes["b"]
    room = 9831
    task = a.sdk().create(create_params(room=str(room), max_idle=120))
    assert pg.psql(f"SELECT owner || '|' || epoch FROM rooms WHERE room_id = '{room}'", db) == "fo-a|1"
    assert pg.psql(f"SELECT node_id FROM tasks WHERE task_id = '{task}'", db) == "fo-a"
    second = b.sdk().create(create_params(room=str(room), max_idle=120))
    assert pg.psql(f"SELECT node_id FROM tasks WHERE task_id = '{second}'", db) == "fo-a"
    b.sdk().delete(second)
    receiver.wait_event(second, 302, 30)

    p = publish(b, room, "fay", "--reconnect", "--fps", "10", duration=60)
    try:
        receiver.wait_event(task, 307, 30)
        a.kill9()
        killed = time.monotonic()
        receiver.wait_event(task, 306, 20)
        took = time.monotonic() - killed
        assert took < 15, f"the task resumed {took:.1f} s after the kill"
        assert pg.psql(f"SELECT owner || '|' || epoch FROM rooms WHERE room_id = '{room}'", db) == "fo-b|2"
        assert pg.psql(f"SELECT node_id FROM tasks WHERE task_id = '{task}'", db) == "fo-b"
        assert b.sdk().describe(task)["Status"] in ("InProgress", "Idle")
        folder = task_files(b, task)
        wait_until(lambda: any(folder.glob("ha1_*.ts")), 30, 0.5, "ha1_ segments on box b")
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=30)
    b.sdk().delete(task)
    receiver.wait_event(task, 302, 30)
    print(f"failover: task {task} resumed on b {took:.1f} s after a was killed")


def test_a_paused_box_is_fenced_when_it_wakes(kiroku, pg, receiver):
    """A network partition, simulated by pausing the recording box
    (SIGSTOP) past its lease: box b takes the task over (306). When a wakes
    (SIGCONT) its next commit for the task is refused by the database
    (the row is b's): a lets the task go, counted, writes nothing more for
    it, and the row stays b's."""
    db = "fleet_fence"
    url = pg.create_db(db)
    a = kiroku("fe-a", callback_url=receiver.url,
               cluster={"postgres_url": url, "node_id": "fe-a", "lease_seconds": 4},
               recording={"segment_seconds": 2})
    b = kiroku("fe-b", callback_url=receiver.url,
               cluster={"postgres_url": url, "node_id": "fe-b", "lease_seconds": 4},
               recording={"segment_seconds": 2})
    room = 9841
    task = a.sdk().create(create_params(room=str(room), max_idle=120))
    pub = Publisher(whip_url(a.url, APP_ID, room, "gus"), fps=10).start(timeout=15)
    try:
        receiver.wait_event(task, 307, 30)
        a.proc.send_signal(signal.SIGSTOP)
        try:
            receiver.wait_event(task, 306, 20)
            assert pg.psql(f"SELECT node_id FROM tasks WHERE task_id = '{task}'", db) == "fe-b"
        finally:
            a.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: metric_value(a.metrics_text(), "kiroku_fleet_tasks_fenced_total") == 1,
                   30, 0.5, "box a fenced: it lets the task go")
        assert metric_value(a.metrics_text(), "kiroku_tasks", {"state": "in_progress"}) == 0
        # Asked on a, the task is b's: the request is relayed there.
        assert a.sdk().describe(task)["TaskId"] == task
        # Fenced by its first heartbeat after waking (the database gives the
        # task to b) or by its next commit, whichever comes first.
        assert ("took this task over" in a.log_text()
                or "the database gives this task to another box" in a.log_text())
        time.sleep(3)
        assert pg.psql(f"SELECT node_id FROM tasks WHERE task_id = '{task}'", db) == "fe-b"
        assert b.sdk().describe(task)["TaskId"] == task
    finally:
        pub.stop()
    b.sdk().delete(task)
    receiver.wait_event(task, 302, 30)
    stops = [c for c in receiver.delivered(task) if c.event_type == 302]
    assert len(stops) == 1, "only the owner ends the task"
