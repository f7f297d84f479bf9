"""Hostile clients against the real daemon (docs/security.md): who may read
the operator endpoints and who may end a publisher's session."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import requests

from kiroku_e2e import ADMIN_HEADERS, ADMIN_TOKEN, wait_until
from test_whip import post_offer

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_operator_endpoints_need_the_admin_token(kiroku):
    """/v1/* answers only `Authorization: Bearer <server.admin_token>`; a box
    with API credentials and no admin token keeps them shut (403); an open
    dev-mode box on loopback answers, as the README's first steps show."""
    d = kiroku("op")
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                    {"Authorization": ADMIN_TOKEN}, {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        r = requests.get(d.url + "/v1/rooms", headers=headers, timeout=5)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer"), r.headers
        assert "admin_token" in r.json()["error"]
        assert "rooms" not in r.text
    r = requests.delete(d.url + "/v1/sessions/anything", timeout=5)
    assert r.status_code == 401
    r = requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 200 and r.json() == {"rooms": [], "sessions": 0}

    cfg = kiroku.config("no_token")
    del cfg["server"]["admin_token"]
    shut = kiroku("no_token", config=cfg)
    r = requests.get(shut.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 403 and "set server.admin_token" in r.json()["error"], r.text

    dev_cfg = kiroku.config("dev", dev_mode=True)
    del dev_cfg["server"]["admin_token"]
    dev = kiroku("dev", config=dev_cfg)
    assert requests.get(dev.url + "/v1/rooms", timeout=5).status_code == 200


def test_only_the_resource_url_or_the_operator_ends_a_session(kiroku):
    """A session's WHIP resource URL is a secret apart from its session id:
    the id (in logs and the operator's status) cannot end the session, the
    resource URL is never logged, and the operator ends any session by id."""
    d = kiroku("kick")
    posted = {}
    for user in ("victim", "other"):
        r = post_offer(d, 8801, user)
        assert r.status_code == 201, r.text
        posted[user] = r.headers["Location"]
    log = ANSI.sub("", d.log_text())
    ids = {user: sid for sid, user in re.findall(r'WHIP session created session_id=(\S+) .*?user_id="?([^"\s]+)', log)}
    assert set(ids) == {"victim", "other"}, log
    for user, location in posted.items():
        token = location.rsplit("/", 1)[1]
        assert len(token) >= 32 and token != ids[user]
        assert token not in log, "the resource token was logged"

    # The session id alone (what logs and GET /v1/rooms show) ends nothing.
    for path in (f"/whip/session/{ids['victim']}", "/whip/session/" + "A" * 32):
        r = requests.delete(d.url + path, timeout=5)
        assert r.status_code == 404, (path, r.status_code)
        assert ids["victim"] not in r.text
    assert requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5).json()["sessions"] == 2

    # The holder of the resource URL ends its own session.
    assert requests.delete(d.url + posted["victim"], timeout=5).status_code == 200
    assert requests.delete(d.url + posted["victim"], timeout=5).status_code == 404
    # The operator ends another by id; without the token it cannot.
    assert requests.delete(f"{d.url}/v1/sessions/{ids['other']}", timeout=5).status_code == 401
    r = requests.delete(f"{d.url}/v1/sessions/{ids['other']}", headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 204, r.text
    assert requests.delete(f"{d.url}/v1/sessions/{ids['other']}", headers=ADMIN_HEADERS,
                           timeout=5).status_code == 404
    wait_until(lambda: requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5).json()["sessions"] == 0,
               5, 0.1, "both sessions gone")
    assert requests.delete(d.url + posted["other"], timeout=5).status_code == 404
    assert "WHIP session ended by the operator" in ANSI.sub("", d.log_text())



def test_state_spool_and_targets_are_private_whatever_the_umask(kiroku):
    """Started with umask 000, kiroku still keeps what holds customer keys
    and unpublished media to itself: state.redb 0600, spool/ and targets/
    0700 (docs/security.md, "What is kept at rest")."""
    old = os.umask(0)
    try:
        d = kiroku("umask0")
    finally:
        os.umask(old)
    data = Path(d.config["data_dir"])

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(data / "state.redb") == 0o600, oct(mode(data / "state.redb"))
    for sub in ("spool", "targets"):
        assert mode(data / sub) == 0o700, (sub, oct(mode(data / sub)))
