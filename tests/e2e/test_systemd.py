"""systemd integration: the unit file, and sd_notify under a fake NOTIFY_SOCKET."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
import requests

from kiroku_e2e import KIROKU_BIN, REPO, create_params

UNIT = REPO / "packaging" / "kiroku.service"


def _unit_copy(tmp_path):
    if not UNIT.exists():
        pytest.skip(f"{UNIT} does not exist yet (the unit file is written separately)")
    text = UNIT.read_text()
    m = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert m, "the unit has no ExecStart="
    text = text.replace(f"ExecStart={m.group(1)}", f"ExecStart={os.path.realpath(KIROKU_BIN)}", 1)
    copy = tmp_path / "kiroku.service"
    copy.write_text(text)
    return copy, text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not on PATH")
def test_unit_file_verifies(tmp_path):
    copy, text = _unit_copy(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # Unknown keys and bad values only warn (exit 0): refuse any warning about our unit.
    ours = [ln for ln in out.splitlines() if "kiroku.service" in ln]
    assert not ours, out


def test_unit_file_matches_the_daemon(tmp_path):
    _, text = _unit_copy(tmp_path)
    service = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            service.setdefault(k.strip(), v.strip())
    # The daemon sends READY=1 / WATCHDOG=1 through $NOTIFY_SOCKET.
    assert service.get("Type") == "notify"
    assert re.search(r"\bserve\b.*--config\s+\S+", service["ExecStart"]), service["ExecStart"]
    assert "WatchdogSec" in service
    # SIGTERM is the graceful stop the daemon implements.
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    # Reload is SIGHUP, which re-reads the TLS pair and stops nothing
    # (test_tls.py): SIGTERM here would end every recording.
    assert re.fullmatch(r"/bin/kill -HUP \$MAINPID", service.get("ExecReload", "")), service.get("ExecReload")


def _recv_all(sock: socket.socket, until: float) -> list[str]:
    out = []
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return out
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            return out
        out.extend(ln for ln in data.decode().splitlines() if ln)


class Notify:
    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.lines: list[tuple[float, str]] = []

    def wait(self, pred, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for _, ln in self.lines:
                if pred(ln):
                    return ln
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout} s; got {[ln for _, ln in self.lines]}")
            for ln in _recv_all(self.sock, time.monotonic() + min(left, 0.1)):
                self.lines.append((time.monotonic(), ln))

    def drain(self, seconds: float) -> None:
        for ln in _recv_all(self.sock, time.monotonic() + seconds):
            self.lines.append((time.monotonic(), ln))

    def count(self, line: str) -> int:
        return sum(1 for _, ln in self.lines if ln == line)

    def close(self):
        self.sock.close()


def test_sd_notify_ready_watchdog_status_stopping(kiroku, tmp_path):
    n = Notify(tmp_path / "notify.sock")
    try:
        d = kiroku("notify", start=False, env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "2000000"})
        d.start(wait=False)
        n.wait(lambda ln: ln == "READY=1", 10, "READY=1")
        # READY=1 means "serving": /healthz answers at once, no retry.
        assert requests.get(d.url + "/healthz", timeout=2).text.strip() == "ok"
        n.wait(lambda ln: ln.startswith("STATUS="), 2, "STATUS=")
        assert any(ln == "STATUS=0 tasks" for _, ln in n.lines), n.lines
        t0 = time.monotonic()
        n.wait(lambda ln: ln == "WATCHDOG=1", 2, "WATCHDOG=1")
        # WatchdogSec=2 s: pinged every second (half the interval), so at least
        # two more pings arrive within ~2.5 s.
        first = n.count("WATCHDOG=1")
        n.drain(2.5 - (time.monotonic() - t0))
        assert n.count("WATCHDOG=1") >= first + 2, n.lines
        # STATUS= follows the number of live tasks.
        api = d.sdk()
        task = api.create(create_params())
        n.wait(lambda ln: ln == "STATUS=1 tasks", 3, "STATUS=1 tasks")
        api.delete(task)

        d.proc.send_signal(signal.SIGTERM)
        n.wait(lambda ln: ln == "STOPPING=1", 5, "STOPPING=1")
        assert d.proc.wait(10) == 0
    finally:
        n.close()


def test_no_watchdog_pings_for_another_pid(kiroku, tmp_path):
    n = Notify(tmp_path / "notify.sock")
    try:
        # WATCHDOG_PID names some other process: the watchdog is not ours.
        env = {"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
        d = kiroku("notify2", start=False, env=env)
        d.start(wait=False)
        n.wait(lambda ln: ln == "READY=1", 10, "READY=1")
        n.drain(1.0)
        assert n.count("WATCHDOG=1") == 0, n.lines
        assert d.stop() == 0
    finally:
        n.close()


def test_no_notify_socket_is_fine(kiroku):
    # Outside systemd the notifications are no-ops; start, serve, stop cleanly.
    d = kiroku("plain")
    assert requests.get(d.url + "/healthz", timeout=2).status_code == 200
    assert d.stop() == 0
