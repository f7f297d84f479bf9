"""Reads kiroku's `GET /v1/rooms` to tell whether a WHIP publisher's media
arrived (stdlib only, so that both Debian's python3 with `gi` and a venv
with PyAV can import it)."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
import urllib.request

_WHIP_PATH = re.compile(r"^/whip/(?P<app>\d+)/(?P<room>[^/]+)/(?P<user>[^/?]+)(?P<aux>/aux)?$")


def parse_whip_url(url: str) -> dict | None:
    """`{base, app, room, user, aux}` from a kiroku WHIP URL, else None."""
    u = urllib.parse.urlsplit(url)
    m = _WHIP_PATH.match(u.path)
    if not m:
        return None
    return {
        "base": f"{u.scheme}://{u.netloc}",
        "app": int(m["app"]),
        "room": urllib.parse.unquote(m["room"]),
        "user": urllib.parse.unquote(m["user"]),
        "aux": bool(m["aux"]),
    }


def user_tracks(url: str) -> dict | None:
    """The publishing user's tracks by kind (`audio`, `main_video`,
    `aux_video`) as `/v1/rooms` shows them, None when the user is not in the
    room (or the URL is not a kiroku WHIP URL)."""
    w = parse_whip_url(url)
    if w is None:
        return None
    # The operator endpoints need server.admin_token (docs/security.md);
    # the e2e suite puts it in the environment.
    token = os.environ.get("KIROKU_ADMIN_TOKEN", "")
    req = urllib.request.Request(w["base"] + "/v1/rooms", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        rooms = json.load(r)["rooms"]
    for room in rooms:
        if room.get("sdk_app_id") != w["app"] or str(room.get("room_id")) != w["room"]:
            continue
        for user in room.get("users", []):
            if user.get("user_id") == w["user"]:
                return {t["kind"]: t for t in user.get("tracks", [])}
    return None
