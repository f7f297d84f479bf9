"""TLS to PostgreSQL (fleet mode): a PostgreSQL that accepts only TLS
(`hostssl`, a certificate from a test CA made with openssl). A box whose
URL says `sslmode=require` and that trusts the CA
(`cluster.postgres_ca_file`) registers and records, over TLS (psql:
pg_stat_ssl); one that trusts another CA refuses the server's certificate,
and one without `sslmode=require` is refused by the server, each saying
why."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiroku_e2e import create_params, wait_until
from pg_cluster import SUPERUSER, PgCluster


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(dir: Path, name: str) -> tuple[Path, Path]:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}", cwd=dir)
    return dir / f"{name}.pem", dir / f"{name}.key"


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.fail("openssl missing (tests/run-all.sh installs it)")
    certs = tmp_path_factory.mktemp("pg-tls")
    ca, ca_key = make_ca(certs, "test-ca")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=certs)
    (certs / "san.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=certs)
    cluster = PgCluster()
    cluster.stop()
    for f in ("server.pem", "server.key"):
        shutil.copy(certs / f, cluster.data / f)
        if cluster.as_root:
            shutil.chown(cluster.data / f, SUPERUSER, SUPERUSER)
        os.chmod(cluster.data / f, 0o600)
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write("ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n")
    (cluster.data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.1/32 trust\n"
        "hostnossl all all 127.0.0.1/32 reject\n")
    cluster.start()
    yield cluster, ca, certs
    cluster.close()


def test_a_box_reaches_postgresql_over_verified_tls_and_only_so(kiroku, tls_pg, tmp_path):
    cluster, ca, certs = tls_pg
    cluster.psql('CREATE DATABASE "fleet_tls"')
    base = cluster.url("fleet_tls")
    d = kiroku("tls-box", cluster={"postgres_url": base + "?sslmode=require", "node_id": "tls-0",
                                   "postgres_ca_file": str(ca)})
    task = d.sdk().create(create_params(room="9401", max_idle=30))
    assert cluster.psql(f"SELECT node_id FROM tasks WHERE task_id = '{task}'", "fleet_tls") == "tls-0"
    ssl = cluster.psql("SELECT bool_and(s.ssl) || ' ' || count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a "
                       "USING (pid) WHERE a.application_name LIKE 'kiroku%'", "fleet_tls")
    assert ssl.startswith("true ") and int(ssl.split()[1]) >= 1, ssl
    d.stop()

    # Another CA: the server's certificate is refused.
    other, _ = make_ca(certs, "other-ca")
    rogue = kiroku("tls-rogue", start=False, cluster={"postgres_url": base + "?sslmode=require",
                                                      "node_id": "tls-1", "postgres_ca_file": str(other)})
    with pytest.raises(AssertionError) as failed:
        rogue.start(timeout=15)
    assert "TLS" in str(failed.value) or "certificate" in str(failed.value), str(failed.value)[-1500:]
    assert "UnknownIssuer" in rogue.log_text() or "certificate" in rogue.log_text(), rogue.log_tail()

    # No sslmode=require: the server (hostssl only) refuses, and says so.
    plain = kiroku("tls-plain", start=False, cluster={"postgres_url": base, "node_id": "tls-2"})
    with pytest.raises(AssertionError):
        plain.start(timeout=15)
    assert "no encryption" in plain.log_text(), plain.log_tail()

    # A CA file that is not PEM is a clear error too.
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    bad = kiroku("tls-junk", start=False, cluster={"postgres_url": base + "?sslmode=require", "node_id": "tls-3",
                                                   "postgres_ca_file": str(junk)})
    with pytest.raises(AssertionError):
        bad.start(timeout=15)
    assert "holds no certificate" in bad.log_text(), bad.log_tail()
