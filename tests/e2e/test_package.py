"""The Debian package (issue 18): `packaging/deb/build.sh` packages the
binary under test; dpkg-deb and lintian inspect the .deb; dpkg installs it
into a throw-away root (a dpkg database of its own, the maintainer scripts
run against that root with DPKG_ROOT), where sysusers and tmpfiles make the
kiroku user and /var/lib/kiroku; the installed binary refuses the shipped
configuration until its placeholder credentials are replaced, then serves;
a purge removes the configuration and keeps the recordings."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from kiroku_e2e import KIROKU_BIN, to_toml

REPO = Path(__file__).resolve().parents[2]
REQUIRED = bool(os.environ.get("KIROKU_REQUIRE_TOOLS"))


def run(*cmd, ok=(0,), **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode in ok, f"{cmd}: {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def workspace_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    block = text.split("[workspace.package]", 1)[1]
    return re.search(r'^version = "([^"]+)"', block, re.M).group(1)


def test_the_package_builds_passes_lintian_installs_and_starts(kiroku, tmp_path):
    for tool in ("dpkg-deb", "dpkg", "systemd-sysusers", "systemd-tmpfiles"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing") if REQUIRED else pytest.skip(f"{tool} missing")
    version = workspace_version()
    built = run(REPO / "packaging/deb/build.sh", "--binary", KIROKU_BIN, "--out", tmp_path / "out", cwd=REPO)
    deb = Path(built.stdout.strip().splitlines()[-1])
    assert deb.name == f"kiroku_{version}_amd64.deb" and deb.is_file(), built.stdout
    print(f"package: {deb.name}, {deb.stat().st_size / 1e6:.1f} MB")

    info = run("dpkg-deb", "--info", deb).stdout
    for field in ("Package: kiroku", f"Version: {version}", "Architecture: amd64", "Depends: libc6"):
        assert field in info, info
    assert run("dpkg-deb", "--field", deb, "Package").stdout.strip() == "kiroku"
    contents = run("dpkg-deb", "--contents", deb).stdout
    for path in ("./usr/bin/kiroku", "./lib/systemd/system/kiroku.service", "./usr/lib/sysusers.d/kiroku.conf",
                 "./usr/lib/tmpfiles.d/kiroku.conf", "./usr/lib/sysctl.d/60-kiroku.conf", "./etc/kiroku/kiroku.toml",
                 "./usr/share/kiroku/grafana/kiroku.json", "./usr/share/kiroku/prometheus/kiroku-alerts.yml",
                 "./usr/share/doc/kiroku/copyright", "./usr/share/doc/kiroku/README.md"):
        assert re.search(rf" {re.escape(path)}$", contents, re.M), (path, contents)
    control = tmp_path / "control"
    run("dpkg-deb", "--control", deb, control)
    assert (control / "conffiles").read_text().split() == ["/etc/kiroku/kiroku.toml"]

    if shutil.which("lintian"):
        lint = run("lintian", "--tag-display-limit", "0", deb, ok=(0, 1, 2))
        errors = [line for line in lint.stdout.splitlines() if line.startswith("E:")]
        assert not errors, lint.stdout
        print(f"lintian: {len(lint.stdout.splitlines())} tag(s), no errors")
    elif REQUIRED:
        pytest.fail("lintian missing (tests/run-all.sh installs it)")

    # Install into a throw-away root with its own dpkg database.
    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").touch()
    dpkg = ["dpkg", f"--root={root}", "--log=/dev/null", "--force-script-chrootless", "--force-not-root",
            "--force-depends"]
    run(*dpkg, "-i", deb)
    status = run(*dpkg, "-s", "kiroku").stdout
    assert "Status: install ok installed" in status and "/etc/kiroku/kiroku.toml" in status, status
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    assert "kiroku" in passwd and passwd["kiroku"][6] == "/usr/sbin/nologin", passwd.get("kiroku")
    uid, gid = int(passwd["kiroku"][2]), int(passwd["kiroku"][3])
    data = (root / "var/lib/kiroku").stat()
    assert (data.st_uid, data.st_gid, data.st_mode & 0o777) == (uid, gid, 0o750), oct(data.st_mode)
    conf = (root / "etc/kiroku/kiroku.toml").stat()
    assert (conf.st_uid, conf.st_gid, conf.st_mode & 0o777) == (0, gid, 0o640), oct(conf.st_mode)

    binary = root / "usr/bin/kiroku"
    assert version in run(binary, "--version").stdout
    # The shipped configuration holds placeholders: refused, saying why.
    refused = run(binary, "check-config", root / "etc/kiroku/kiroku.toml", ok=(2,))
    assert "placeholder" in refused.stderr, refused.stderr
    for cmd in ("serve", "check-config", "publish", "merge", "drain", "doctor"):
        assert run(binary, cmd, "--help").stdout.startswith(("Run", "Validate", "Publish", "Merge", "Fleet",
                                                               "Check")), cmd
    # With real credentials, the installed binary serves.
    cfg = kiroku.config("packaged")
    cfg_path = tmp_path / "packaged.toml"
    cfg_path.write_text(to_toml(cfg))
    p = subprocess.Popen([binary, "serve", "--config", cfg_path], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        url = cfg["server"]["public_url"] + "/healthz"
        deadline = time.time() + 20
        while True:
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline and p.poll() is None, "the installed binary did not serve"
            time.sleep(0.2)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0

    # Purge: the configuration goes, the data stays.
    (root / "var/lib/kiroku/keep.txt").write_text("a recording")
    run(*dpkg, "--purge", "kiroku")
    assert not (root / "usr/bin/kiroku").exists() and not (root / "etc/kiroku/kiroku.toml").exists()
    assert (root / "var/lib/kiroku/keep.txt").exists()
