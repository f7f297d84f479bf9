"""Fleet mode, part one (issue 17): the state store on PostgreSQL.

With `[cluster] postgres_url` a box keeps its tasks, their callbacks and
the records set aside in PostgreSQL instead of `data_dir/state.redb`: the
schema is migrated at start, Tencent's SDK drives the task lifecycle, psql
sees the rows, a restart resumes from the database, and a database that
goes away and comes back costs errors while it is away, never a hang.
(Leases, placement, redirects and failover across boxes come next.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from kiroku_e2e import create_params, wait_until


def fleet_box(kiroku, pg, name: str, receiver=None, **kw):
    url = pg.create_db(name)
    return kiroku(name, callback_url=receiver.url if receiver else None,
                  cluster={"postgres_url": url, "node_id": f"box-{name}"}, **kw), url


def test_tasks_and_callbacks_live_in_postgresql(kiroku, pg, receiver):
    d, _ = fleet_box(kiroku, pg, "fleet_lifecycle", receiver)
    db = "fleet_lifecycle"
    assert pg.psql("SELECT max(version) FROM kiroku_schema", db) == "1"
    assert not (Path(d.config["data_dir"]) / "state.redb").exists(), "no embedded store in fleet mode"
    assert "postgres://postgres@127.0.0.1" in d.log_text() and "box-fleet_lifecycle" in d.log_text()
    api = d.sdk()
    task = api.create(create_params(room="9701", max_idle=3600))
    assert pg.psql(f"SELECT count(*) FROM tasks WHERE task_id = '{task}'", db) == "1"
    value = pg.psql(f"SELECT convert_from(value, 'UTF8') FROM tasks WHERE task_id = '{task}'", db)
    assert f'"task_id":"{task}"' in value, value[:200]

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
    receiver.wait_event(task, 302, 60)
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
