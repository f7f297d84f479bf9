"""Fixtures: kiroku daemons on free ports, callback receivers, SDK clients.

Run from the repository root:  .venv/bin/python -m pytest -q tests/e2e
The binary is $KIROKU_BIN (default target/debug/kiroku).

KIROKU_REQUIRE_ALL=1 (set by tests/run-all.sh, the README's test command):
every skip (a missing tool, a failed probe, an absent file, a skipif
marker, pytest.skip/importorskip anywhere) is reported as a failure with
its reason, so the suite cannot pass by not running something.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kiroku_e2e import (
    ACTIVE_DAEMONS,
    KIROKU_BIN,
    CallbackReceiver,
    Daemon,
    base_config,
    deep_merge,
    free_port,
)


REQUIRE_ALL = os.environ.get("KIROKU_REQUIRE_ALL") == "1"


def pytest_report_header(config):
    mode = "KIROKU_REQUIRE_ALL=1: skips fail" if REQUIRE_ALL else "skips allowed (KIROKU_REQUIRE_ALL unset)"
    return f"kiroku binary: {KIROKU_BIN}; {mode}"


def pytest_sessionstart(session):
    if not Path(KIROKU_BIN).exists():
        # Not fatal here: Daemon.start() waits a little for a relink.
        print(f"warning: {KIROKU_BIN} does not exist (set KIROKU_BIN)")


def _skip_reason(rep) -> str:
    """The reason of a skipped report: pytest stores (file, line, reason)."""
    lr = rep.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        path, line, reason = lr
        return f"{reason} (skipped at {path}:{line})"
    return str(lr)


def _skip_to_failure(rep) -> None:
    """Under KIROKU_REQUIRE_ALL=1, turns a skipped (or xfailed) report into a failed one."""
    if not (REQUIRE_ALL and rep.skipped):
        return
    if hasattr(rep, "wasxfail"):
        reason = f"xfail: {rep.wasxfail}"
        del rep.wasxfail
    else:
        reason = _skip_reason(rep)
    rep.outcome = "failed"
    rep.longrepr = (f"KIROKU_REQUIRE_ALL=1: skipping is a failure under the test command; "
                    f"install or fix what is missing.\nskip reason: {reason}")


# tryfirst: the outermost wrapper, so it sees the report after pytest's own
# skip/xfail handling has finished with it.
@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _skip_to_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    _skip_to_failure(rep)
    if rep.failed:
        for d in list(ACTIVE_DAEMONS):
            rep.sections.append((f"kiroku log: {d.log_path}", d.log_tail(150)))


class DaemonFactory:
    """Starts daemons with custom config pieces; stops and checks them at teardown."""

    def __init__(self, root: Path):
        self.root = root
        self.daemons: list[Daemon] = []

    def config(self, name: str = "kiroku", *, callback_url: str | None = None, dev_mode: bool = False,
               port: int | None = None, data_dir: Path | None = None, **overrides) -> dict:
        port = port or free_port()
        cfg = base_config(data_dir or (self.root / name / "data"), port, callback_url, dev_mode)
        return deep_merge(cfg, overrides)

    def __call__(self, name: str = "kiroku", *, start: bool = True, env: dict | None = None,
                 config: dict | None = None, ca: str | Path | None = None,
                 wrapper: list[str] | None = None, **kw) -> Daemon:
        if config is None:
            config = self.config(name, **kw)
        d = Daemon(self.root / name, config, name=name, env=env, ca=ca, wrapper=wrapper)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def finish(self) -> None:
        problems = []
        for d in self.daemons:
            if d.running:
                try:
                    rc = d.stop(timeout=10)
                except AssertionError as e:
                    problems.append(str(e))
                    continue
                if rc != 0:
                    problems.append(f"{d.name} exited with {rc} on SIGTERM (expected 0)\n{d.log_tail()}")
            if not d.expect_panics and re.search(r"panicked", d.log_text()):
                problems.append(f"{d.name} panicked\n{d.log_tail(200)}")
            if d in ACTIVE_DAEMONS:
                ACTIVE_DAEMONS.remove(d)
        assert not problems, "\n\n".join(problems)


@pytest.fixture
def kiroku(tmp_path):
    """Factory: `kiroku(name, callback_url=..., limits={...}, ...)` → a started Daemon.

    Keyword arguments other than name/start/env/config/ca/callback_url/dev_mode/
    port/data_dir are merged into the default config (kiroku_e2e.base_config);
    `ca` is the CA file a TLS daemon's certificate (server.tls_cert) is
    verified with (kiroku_e2e.Daemon).
    At teardown every daemon still running gets SIGTERM and must exit 0 within
    10 s, and no daemon log may contain "panicked".
    """
    f = DaemonFactory(tmp_path)
    yield f
    f.finish()


@pytest.fixture(scope="module")
def kiroku_module(tmp_path_factory):
    """Like `kiroku`, shared by a whole test module."""
    f = DaemonFactory(tmp_path_factory.mktemp("kiroku"))
    yield f
    f.finish()


@pytest.fixture(scope="module")
def daemon(kiroku_module):
    """One authenticated daemon (no callbacks) shared by a module."""
    return kiroku_module("shared")


@pytest.fixture(scope="module")
def api(daemon):
    return daemon.sdk()


@pytest.fixture
def make_receiver():
    """Factory of callback receivers; `make_receiver(start=False)` reserves a port only."""
    made: list[CallbackReceiver] = []

    def make(start: bool = True) -> CallbackReceiver:
        r = CallbackReceiver()
        made.append(r)
        if start:
            r.start()
        return r

    yield make
    for r in made:
        r.stop()
    for r in made:
        r.assert_no_bad_bodies()


@pytest.fixture
def receiver(make_receiver):
    """A running callback receiver (answers 200 unless told otherwise)."""
    return make_receiver()


@pytest.fixture(scope="session")
def pg():
    """A throw-away PostgreSQL cluster (tests/e2e/pg_cluster.py) for the
    whole run; each test makes its own database with `pg.create_db`."""
    from pg_cluster import PgCluster, bin_dir
    if bin_dir() is None:
        pytest.skip("PostgreSQL not installed (apt-get install postgresql)")
    cluster = PgCluster()
    yield cluster
    cluster.close()
