"""`kiroku check-config` and `kiroku serve` with good and bad configuration files."""

from __future__ import annotations

import socket
import re
import secrets
import subprocess
import time

import pytest

from kiroku_e2e import KIROKU_BIN, REPO, base_config, free_port, to_toml

PACKAGED = REPO / "packaging" / "kiroku.toml"


def run(*args, timeout=15) -> subprocess.CompletedProcess:
    return subprocess.run([KIROKU_BIN, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_packaged_example_config_is_refused_until_its_placeholder_keys_are_replaced(tmp_path):
    """The example ships `change-me` keys: check-config (and serve) refuse
    them by name; with real keys in their place the example is valid."""
    r = run("check-config", PACKAGED)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "server.admin_token" in r.stderr and "placeholder" in r.stderr, r.stderr
    text = PACKAGED.read_text()
    placeholders = sorted(set(re.findall(r'"(change-me[a-z-]*)"', text)))
    assert placeholders, "the example has no placeholder keys left to replace"
    for i, p in enumerate(placeholders):
        text = text.replace(f'"{p}"', f'"{secrets.token_hex(12)}{i}"')
    fixed = tmp_path / "kiroku.toml"
    fixed.write_text(text)
    r = run("check-config", fixed)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout
    assert "authenticated" in r.stdout  # it configures [[credentials]]


@pytest.mark.parametrize("key,value,needle", [
    ("credentials", [{"secret_id": "AKIDx", "secret_key": "short-key-15byt"}], "credentials[0].secret_key"),
    ("server", {"admin_token": "0123456789abcde"}, "server.admin_token"),
    ("server", {"admin_token": "change-me"}, "server.admin_token"),
])
def test_weak_secrets_are_refused(tmp_path, key, value, needle):
    """Secrets under 16 bytes or copied from the example never guard a box."""
    cfg = base_config(tmp_path / "data", free_port())
    cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    p = tmp_path / "k.toml"
    p.write_text(to_toml(cfg))
    r = run("check-config", p)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr and ("16 bytes" in r.stderr or "placeholder" in r.stderr), r.stderr


def test_suite_config_is_valid(tmp_path):
    p = tmp_path / "k.toml"
    p.write_text(to_toml(base_config(tmp_path / "data", free_port())))
    r = run("check-config", p)
    assert r.returncode == 0, r.stderr
    assert "3 app(s)" in r.stdout


def test_dev_mode_on_loopback_is_valid(tmp_path):
    p = tmp_path / "k.toml"
    p.write_text(to_toml(base_config(tmp_path / "data", free_port(), dev_mode=True)))
    r = run("check-config", p)
    assert r.returncode == 0, r.stderr
    assert "open dev" in r.stdout


@pytest.mark.parametrize("text,key", [
    ('colour = 1\n', "colour"),
    ('[server]\nlistn = "127.0.0.1:8080"\n', "listn"),
    ('[limits]\nmax_task = 3\n', "max_task"),
    ('[[apps]]\nsdk_app_id = 1400000001\nsdkappid = 2\n', "sdkappid"),
    ('[[credentials]]\nsecret_id = "a"\nsecret_key = "b"\nsecret = "c"\n', "secret"),
    ('[callbacks]\nretry_for = 5\n', "retry_for"),
])
def test_unknown_key_is_refused_by_name(tmp_path, text, key):
    p = tmp_path / "k.toml"
    p.write_text(text)
    r = run("check-config", p)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert key in r.stderr, r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("text,needle", [
    ('[server]\nlisten = "0.0.0.0:8080"\n', "loopback"),
    ('[server]\nlisten = "localhost"\n', "server.listen"),
    ('[server]\nmax_body_bytes = 10\n', "server.max_body_bytes"),
    ('[server]\npublic_url = "ftp://x"\n', "server.public_url"),
    ('[limits]\nmax_tasks = 0\n', "limits.max_tasks"),
    ('[limits]\napi_rate_per_second = 0\n', "limits.api_rate_per_second"),
    ('[callbacks]\ntimeout_seconds = 0\n', "callbacks.timeout_seconds"),
    ('[log]\nformat = "xml"\n', "log.format"),
    ('[[apps]]\nsdk_app_id = 1\ncallback_url = "http://x/cb"\n', "callback_key"),
    ('[[apps]]\nsdk_app_id = 1\n[[apps]]\nsdk_app_id = 1\n', "twice"),
    ('[[apps]]\nsdk_app_id = 1\nuser_sig_key = ""\n', "user_sig_key"),
    ('[limits]\nmax_tasks = "many"\n', "max_tasks"),
    ('data_dir = \n', "data_dir"),
])
def test_invalid_values_are_refused_by_name(tmp_path, text, needle):
    p = tmp_path / "k.toml"
    if "0.0.0.0" in text:
        # Only the problem under test: ingest would otherwise need advertised_addresses.
        text += '[ingest]\nudp_listen = "127.0.0.1:8443"\n'
    p.write_text(text)
    r = run("check-config", p)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr


def test_dev_mode_on_all_interfaces_is_refused(tmp_path):
    cfg = base_config(tmp_path / "data", free_port(), dev_mode=True)
    cfg["server"]["listen"] = f"0.0.0.0:{free_port()}"
    p = tmp_path / "k.toml"
    p.write_text(to_toml(cfg))
    r = run("check-config", p)
    assert r.returncode == 2
    assert "credentials" in r.stderr and "loopback" in r.stderr, r.stderr
    # serve refuses it too, before binding anything.
    r = run("serve", "--config", p)
    assert r.returncode != 0
    assert "loopback" in r.stderr
    # With credentials the same address is fine.
    cfg["credentials"] = [{"secret_id": "AKIDx", "secret_key": "k" * 16}]
    p.write_text(to_toml(cfg))
    assert run("check-config", p).returncode == 0


def test_missing_config_file(tmp_path):
    r = run("check-config", tmp_path / "nope.toml")
    assert r.returncode == 2
    assert "nope.toml" in r.stderr


def test_serve_with_bad_config_exits_with_the_message(tmp_path):
    port = free_port()
    cfg = base_config(tmp_path / "data", port)
    text = to_toml(cfg).replace("[limits]", "[limits]\nmax_tasks_typo = 5")
    p = tmp_path / "k.toml"
    p.write_text(text)
    t0 = time.monotonic()
    r = run("serve", "--config", p, timeout=10)
    assert r.returncode != 0
    assert time.monotonic() - t0 < 10
    assert "max_tasks_typo" in r.stderr, r.stderr
    # It never listened and never created its data_dir.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert not (tmp_path / "data").exists()


def test_serve_on_a_busy_port_fails_clearly(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        p = tmp_path / "k.toml"
        p.write_text(to_toml(base_config(tmp_path / "data", port)))
        r = run("serve", "--config", p, timeout=10)
    assert r.returncode != 0
    assert "server.listen" in r.stderr or str(port) in r.stderr, r.stderr


def test_serve_with_a_data_dir_that_is_a_file(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    p = tmp_path / "k.toml"
    p.write_text(to_toml(base_config(blocker / "data", free_port())))
    r = run("serve", "--config", p, timeout=10)
    assert r.returncode != 0
    assert "data_dir" in r.stderr, r.stderr


def test_json_log_format(kiroku):
    import json
    d = kiroku("jsonlog", log={"format": "json", "level": "debug"})
    d.sdk().error("DescribeCloudRecording", {"SdkAppId": 1400000001, "TaskId": "abc"})
    d.stop()
    lines = [ln for ln in d.log_text().splitlines() if ln.startswith("{")]
    assert lines, d.log_text()
    records = [json.loads(ln) for ln in lines]
    assert any(r.get("fields", {}).get("message") == "listening" for r in records), records[:3]
    assert all("level" in r and "timestamp" in r for r in records)


def test_plain_http_callbacks_off_the_box_need_an_opt_in(tmp_path):
    """Callbacks over plain HTTP to another host are refused unless
    callbacks.allow_http says so (loopback receivers need no opt-in)."""
    cfg = base_config(tmp_path / "data", free_port(), callback_url="http://callbacks.example/recording")
    p = tmp_path / "k.toml"
    p.write_text(to_toml(cfg))
    r = run("check-config", p)
    assert r.returncode == 2 and "apps[0].callback_url" in r.stderr and "allow_http" in r.stderr, r.stderr
    cfg["callbacks"]["allow_http"] = True
    p.write_text(to_toml(cfg))
    assert run("check-config", p).returncode == 0
