"""`kiroku doctor` (issue 18): it checks an installation and says how to
fix what is wrong. Each test plants misconfigurations an installer makes and
checks that doctor finds each one (status, detail, fix) and that its exit
code says whether the box will work; one runs it beside a live daemon."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from kiroku_e2e import KIROKU_BIN, deep_merge, free_port, to_toml

pytest.importorskip("boto3", reason="pip install -r tests/e2e/requirements.txt (boto3, moto)")
from test_storage import BUCKET, moto, storage_config  # noqa: E402,F401  (moto: a fixture)


def doctor(config: dict | None, tmp_path: Path, *args: str) -> tuple[int, dict]:
    cmd = [KIROKU_BIN, "doctor", "--json", *args]
    if config is not None:
        path = tmp_path / f"doctor-{len(list(tmp_path.glob('doctor-*.toml')))}.toml"
        path.write_text(to_toml(config))
        cmd += ["--config", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


def by_check(report: dict) -> dict[str, dict]:
    return {f["check"]: f for f in report["findings"]}


def s3_file(tmp_path: Path, name: str, bucket: str) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({"Vendor": 1, "Region": "us-east-1", "Bucket": bucket,
                             "AccessKey": "AKIDdoctor", "SecretKey": "doctor-secret"}))
    return p


def test_a_sound_installation_passes_every_check(kiroku, receiver, moto, tmp_path):
    cfg = kiroku.config("doc-ok", callback_url=receiver.url, storage=storage_config(moto.port))
    rc, report = doctor(cfg, tmp_path, "--s3", str(s3_file(tmp_path, "good.json", BUCKET)))
    found = by_check(report)
    failed = {k: v for k, v in found.items() if v["status"] == "fail"}
    assert rc == 0 and report["ok"] and not failed, failed
    assert found["config"]["status"] == "ok"
    assert found["server.listen"]["detail"].endswith("is free")
    assert "leads back to server.listen" in found["server.public_url"]["detail"]
    assert found["ingest.udp_listen"]["status"] == "ok" and "udp" in found["ingest.udp_listen"]["detail"].lower()
    assert found["data_dir"]["status"] == "ok"
    assert found["io_uring"]["status"] == "ok", found["io_uring"]
    s3 = next(v for k, v in found.items() if k.startswith("s3 "))
    assert s3["status"] == "ok" and "PUT, HEAD and DELETE" in s3["detail"], s3
    assert not moto.objects(".kiroku-doctor/"), "the probe object is deleted"
    assert found["callback of app 1400000001"]["status"] == "ok"
    assert {"gpu", "nvenc", "nvdec", "clock", "secrets at rest"} <= found.keys()
    # Without --json, a table with a summary line.
    path = tmp_path / "ok.toml"
    path.write_text(to_toml(cfg))
    r = subprocess.run([KIROKU_BIN, "doctor", "--config", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.rstrip().splitlines()[-1]
    assert "[ ok ] server.public_url" in r.stdout and " 0 failed, " in last, r.stdout


def test_each_planted_misconfiguration_is_found_with_its_fix(kiroku, moto, tmp_path):
    # A TCP port held by some other program, and a UDP one.
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    udp_squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_squatter.bind(("127.0.0.1", 0))
    data_file = tmp_path / "not-a-dir"
    data_file.write_text("a file where data_dir should be")
    dead_port = free_port()
    cfg = kiroku.config("doc-bad", callback_url=f"http://127.0.0.1:{dead_port}/cb",
                        storage=storage_config(moto.port))
    cfg = deep_merge(cfg, {
        "data_dir": str(data_file),
        "server": {"listen": f"127.0.0.1:{squatter.getsockname()[1]}"},
        "ingest": {"udp_listen": f"127.0.0.1:{udp_squatter.getsockname()[1]}",
                   "advertised_addresses": ["203.0.113.7"]},
    })
    try:
        rc, report = doctor(cfg, tmp_path, "--s3", str(s3_file(tmp_path, "nobucket.json", "no-such-bucket")))
    finally:
        squatter.close()
        udp_squatter.close()
    found = by_check(report)
    assert rc == 1 and not report["ok"], report
    listen = found["server.listen"]
    assert listen["status"] == "fail" and "in use by another program" in listen["detail"], listen
    assert "ss -ltnp" in listen["fix"]
    udp = found["ingest.udp_listen"]
    assert udp["status"] == "fail" and "in use by another program" in udp["detail"], udp
    ads = found["ingest addresses"]
    assert ads["status"] == "warn" and "203.0.113.7" in ads["detail"] and "NAT" in ads["fix"], ads
    dd = found["data_dir"]
    assert dd["status"] == "fail" and "cannot be created" in dd["detail"], dd
    s3 = next(v for k, v in found.items() if k.startswith("s3 "))
    assert s3["status"] == "fail" and "NoSuchBucket" in s3["detail"] and "create the bucket" in s3["fix"], s3
    cb = found["callback of app 1400000001"]
    assert cb["status"] == "fail" and str(dead_port) in cb["detail"], cb

    # public_url that leads elsewhere (a port where nothing of this box runs).
    cfg = kiroku.config("doc-url")
    cfg["server"]["public_url"] = f"http://127.0.0.1:{dead_port}"
    rc, report = doctor(cfg, tmp_path)
    url = by_check(report)["server.public_url"]
    assert rc == 1 and url["status"] == "fail" and str(dead_port) in url["detail"], url
    assert "public_url" in url["fix"]

    # A configuration that does not load: the rest is not checked.
    rc, report = doctor({"server": {"listen": "nowhere"}}, tmp_path)
    assert rc == 1 and [f["check"] for f in report["findings"]] == ["clock", "config"], report
    assert "server.listen" in report["findings"][1]["detail"]

    # A bad --s3 file is reported, not a crash.
    bad = tmp_path / "bad.json"
    bad.write_text('{"Vendor": 7}')
    rc, report = doctor(kiroku.config("doc-s3"), tmp_path, "--s3", str(bad))
    s3 = next(v for k, v in by_check(report).items() if k.startswith("s3 "))
    assert rc == 1 and s3["status"] == "fail" and "CloudStorage" in s3["detail"], s3


def test_beside_a_running_daemon_doctor_asks_it(kiroku, tmp_path):
    d = kiroku("doc-live")
    rc, report = doctor(d.config, tmp_path)
    found = by_check(report)
    assert rc == 0, report
    assert "held by a running kiroku" in found["server.listen"]["detail"]
    assert found["server.public_url"]["status"] == "ok" and "/healthz answers" in found["server.public_url"]["detail"]
    assert "held by the running kiroku" in found["ingest.udp_listen"]["detail"]
