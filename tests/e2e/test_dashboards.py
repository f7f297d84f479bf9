"""The Grafana dashboard (packaging/grafana/kiroku.json) and the Prometheus
alert rules (packaging/prometheus/kiroku-alerts.yml) against a live daemon.

A daemon records for real (an aiortc publisher, a single-stream task
uploading to S3 through an outage, a mixed-stream task, a task refused for
capacity), and:
- every metric name that a dashboard query or an alert rule uses, read with
  a small PromQL tokenizer, is a series the live daemon exports (a
  histogram's `_bucket`/`_sum`/`_count`, never its bare family name), and
  every label a selector matches on is one those series carry;
- a real Prometheus (the `prometheus` package) scrapes the daemon with the
  rules loaded: every dashboard query, with Grafana's variables filled in as
  Grafana would, runs without error and returns data at some point of the
  recording; every rule evaluates without error, and the alerts the scenario
  provokes (stranded files, a refused create) become active;
- `promtool check rules` and `promtool test rules` pass;
- the dashboard is import-ready JSON: unique panel ids, a datasource and at
  least one query on every panel that is not a row.

promtool and prometheus are required (the test fails) when
KIROKU_REQUIRE_TOOLS is set, as tests/run-all.sh does; otherwise a missing
tool skips."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml  # PyYAML: installed with moto (its dependency responses needs it)

from kiroku_e2e import APP_ID, REPO, create_params, free_port, metric_samples, metric_value, wait_until

pytest.importorskip("aiortc", reason="pip install -r tests/e2e/requirements.txt (aiortc)")
from independent_publisher import Publisher, whip_url  # noqa: E402
from test_storage import BUCKET, Moto, Relay, cloud_storage, storage_config  # noqa: E402

DASHBOARD = REPO / "packaging" / "grafana" / "kiroku.json"
RULES = REPO / "packaging" / "prometheus" / "kiroku-alerts.yml"
RULE_TESTS = REPO / "packaging" / "prometheus" / "kiroku-alerts.test.yml"

REQUIRE_TOOLS = os.environ.get("KIROKU_REQUIRE_TOOLS", "") not in ("", "0")

# The only series a rule may use that the daemon does not export: the one
# Prometheus writes for every scrape target (KirokuDown).
PROMETHEUS_SERIES = {"up"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not on PATH (apt-get install prometheus)"
        if REQUIRE_TOOLS:
            pytest.fail(f"{why}; KIROKU_REQUIRE_TOOLS is set")
        pytest.skip(why)
    return path


# --------------------------------------------------------------------------
# PromQL: which metric names (and selector labels) an expression uses
# --------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:ms|[smhdwy]))+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<space>\s+)
  | (?P<punct>=~|!~|!=|==|>=|<=|.)
""", re.VERBOSE | re.DOTALL)

# Keywords and modifiers: never metric names.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
             "unless", "atan2", "inf", "nan", "start", "end"}
# Followed by a parenthesised list of label names.
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def _tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    for m in _TOKEN.finditer(expr):
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
    return out


def promql_selectors(expr: str) -> list[tuple[str, set[str]]]:
    """Every series selector of a PromQL expression: (metric name, the label
    names it matches on). Function and aggregation names, keywords, label
    names (in `{...}`, `by (...)`, `on (...)`, ...), strings, numbers,
    durations, ranges and Grafana variables are not metric names; a
    `{__name__="x"}` selector names x."""
    toks = _tokens(expr)
    out: list[tuple[str, set[str]]] = []
    i = 0

    def skip_group(j: int, close: str) -> int:
        """From the opening bracket at j, the index after its match."""
        opening = toks[j][1]
        depth = 0
        while j < len(toks):
            if toks[j][1] == opening:
                depth += 1
            elif toks[j][1] == close:
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        raise ValueError(f"unbalanced {opening!r} in {expr!r}")

    def matchers(j: int) -> tuple[set[str], str | None, int]:
        """The `{...}` at j: its label names, a __name__ it sets, the index after it."""
        end = skip_group(j, "}")
        names, name_value = set(), None
        k = j + 1
        while k < end - 1:
            kind, text = toks[k]
            if kind == "ident":
                names.add(text)
                if text == "__name__" and toks[k + 1][1] == "=" and toks[k + 2][0] == "string":
                    name_value = toks[k + 2][1][1:-1]
            k += 1
        names.discard("__name__")
        return names, name_value, end

    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "[":  # a range or subquery: durations and variables only
            i = skip_group(i, "]")
        elif text == "{":  # a selector without a metric name
            names, name_value, i = matchers(i)
            if name_value:
                out.append((name_value, names))
        elif kind == "ident" and text.lower() in _KEYWORDS:
            i += 1
            if text in _LABEL_LISTS and nxt == "(":
                i = skip_group(i, ")")
        elif kind == "ident" and nxt in ("(", "by", "without"):  # a function or an aggregation
            i += 1
        elif kind == "ident":
            names: set[str] = set()
            i += 1
            if nxt == "{":
                names, _, i = matchers(i)
            out.append((text, names))
        else:
            i += 1
    return out


def promql_metric_names(expr: str) -> set[str]:
    return {name for name, _ in promql_selectors(expr)}


def test_promql_tokenizer_reads_metric_names_only():
    cases = {
        'sum by (instance, le) (rate(a_seconds_bucket{code=~"x|y", action!="b"}[5m]))': {"a_seconds_bucket"},
        "a > 0 and on (instance) rate(b[10m]) == 0": {"a", "b"},
        "x unless x offset 15m and on (instance) y offset 1h30m": {"x", "y"},
        "histogram_quantile(0.99, sum by (le) (rate(h_bucket[$__rate_interval])))": {"h_bucket"},
        'y{instance=~"$instance"} / ($spool_capacity_mb * 1024 * 1024) > 0.8': {"y"},
        'count_values("version", build) + label_replace(up, "dst", "$1", "src", "(.*)")': {"build", "up"},
        "sum without (job) (z) * on (instance) group_left (version) info": {"z", "info"},
        "max by (instance) (q) / ignoring (x) group_right r": {"q", "r"},
        "sum by(instance)(rate(w[5m:1m] offset -5m)) >= bool 1e3": {"w"},
        "group_left_total * ignoring(by) sum_total": {"group_left_total", "sum_total"},
        '{__name__="named", state="x"} or topk(10, t) or Inf or NaN': {"named", "t"},
        "min_over_time(kiroku_build_info[1h]) == 0x1f": {"kiroku_build_info"},
    }
    for expr, want in cases.items():
        assert promql_metric_names(expr) == want, (expr, promql_selectors(expr))
    assert promql_selectors('kiroku_tasks{instance=~"$instance", state!="exited"} offset 5m') == \
        [("kiroku_tasks", {"instance", "state"})]


# --------------------------------------------------------------------------
# The two files
# --------------------------------------------------------------------------

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels(dash: dict) -> list[dict]:
    """Every panel that is not a row (rows hold no query), nested ones included."""
    out = []
    for p in dash["panels"]:
        if p["type"] == "row":
            out += p.get("panels", [])
        else:
            out.append(p)
    return out


def dashboard_queries(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and of the query variables."""
    out = []
    for p in query_panels(dash):
        for t in p["targets"]:
            out.append((f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", q)
            assert m, f"variable {v['name']}: only label_values(metric, label) queries are used: {q!r}"
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def rule_queries() -> list[tuple[str, str]]:
    return [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rules()]


def test_dashboard_is_import_ready():
    dash = dashboard()
    assert dash["uid"] == "kiroku" and dash["title"] and 36 <= dash["schemaVersion"] <= 41, dash["schemaVersion"]
    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource" and inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    inst = variables["instance"]
    assert inst["type"] == "query" and inst["datasource"] == ds, inst
    # The limits come from the boxes' own gauges (kiroku_limit_max_tasks,
    # kiroku_spool_capacity_bytes), not from values typed into the dashboard.
    assert set(variables) == {"instance"}, sorted(variables)
    assert inst["query"]["query"] == "label_values(kiroku_tasks, instance)", inst
    ids = [p["id"] for p in dash["panels"]] + [q["id"] for p in dash["panels"] for q in p.get("panels", [])]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    panels = query_panels(dash)
    assert len(panels) >= 20, len(panels)
    for p in panels:
        where = f"panel {p['id']} {p['title']!r}"
        assert p.get("title") and p.get("description"), where
        assert p.get("datasource") == ds, (where, p.get("datasource"))
        assert p.get("targets"), f"{where} has no query"
        for t in p["targets"]:
            assert t.get("expr", "").strip(), (where, t)
            assert t.get("datasource", ds) == ds, (where, t)
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), (where, refs)
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, (where, g)
    # Every $variable a query uses is defined (or one of Grafana's own).
    for where, expr in dashboard_queries(dash):
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert var in variables or var.startswith("__"), f"{where}: ${var} is not a dashboard variable"


def test_alert_rules_pass_promtool():
    promtool = tool("promtool")
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        r = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"promtool {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    for r in rules():
        where = f"rule {r['alert']}"
        assert r["alert"].startswith("Kiroku"), where
        assert "for" in r, f"{where}: no for:"
        assert r["labels"]["severity"] in ("critical", "warning"), where
        assert r["annotations"]["summary"] and r["annotations"]["description"], where
    # Each rule has a unit test.
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    for name in ("KirokuRecordingStoppedUnexpectedly", "KirokuCallbacksBackingUp", "KirokuUploadsStranded",
                 "KirokuSpoolFilling", "KirokuCapacityNearFull", "KirokuCapacityExhausted"):
        assert name in tested, f"{name} has no promtool test"


# --------------------------------------------------------------------------
# A live daemon, scraped by a real Prometheus
# --------------------------------------------------------------------------

def exported_series(text: str) -> dict[str, set[str]]:
    """Series name → label names, for every sample in a /metrics text (a
    histogram's samples are its `_bucket`, `_sum` and `_count`)."""
    out: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s", line)
        assert m, f"unparsable /metrics line {line!r}"
        labels = set(re.findall(r'(\w+)="', m.group(2) or ""))
        out.setdefault(m.group(1), set()).update(labels)
    return out


def total(text: str, name: str) -> float:
    """The sum of `name`'s samples; 0 while a labelled family has none yet."""
    return sum(v for _, v in metric_samples(text, name))


class Prometheus:
    """A Prometheus server scraping one daemon every 2 s (a scrape may take that
    long on a loaded machine), evaluating the kiroku rules every second."""

    def __init__(self, workdir: Path, target: str):
        binary = tool("prometheus")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "kiroku", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(self._ready, 30, 0.2, "prometheus ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited with {self.proc.returncode}"
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def api(self, path: str, **params) -> object:
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, r.status_code, body)
        return body["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def active_alerts(self) -> dict[str, str]:
        return {a["labels"]["alertname"]: a["state"] for a in self.api("alerts")["alerts"]}

    def log_tail(self, lines: int = 40) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


class PanelWatch:
    """Runs every dashboard query on Prometheus, as Grafana would fill in its
    variables, and remembers which ones have returned data so far."""

    def __init__(self, prom: Prometheus, queries: list[tuple[str, str]], variables: dict[str, str]):
        self.prom = prom
        self.waiting: dict[str, str] = {}
        for where, expr in queries:
            filled = expr
            # Longest names first, so that $instance_x would not be read as $instance.
            for name in sorted(variables, key=len, reverse=True):
                filled = filled.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
            assert "$" not in filled, f"{where}: a variable is left in {filled!r}"
            self.waiting[where] = filled
        self.filled = dict(self.waiting)

    def panel_query(self, title: str) -> str:
        """The filled-in query of the one-query panel titled `title`."""
        found = [expr for where, expr in self.filled.items() if f" {title!r} target " in where]
        assert len(found) == 1, (title, list(self.filled))
        return found[0]

    def poll(self) -> int:
        """Queries those that have returned nothing yet; returns how many still have not."""
        for where, expr in list(self.waiting.items()):
            if self.prom.query(expr):
                del self.waiting[where]
        return len(self.waiting)


def test_dashboard_and_alerts_use_what_a_live_daemon_exports(kiroku, receiver, tmp_path):
    tool("prometheus")  # before anything starts
    moto = Moto()
    moto.client.create_bucket(Bucket=BUCKET)
    relay = Relay(moto.port)
    relay.cut()  # S3 is down when the recording starts: uploads fail, then strand
    prom = None
    pub = None
    try:
        max_tasks, spool_mb = 3, 256
        d = kiroku("dash", callback_url=receiver.url, limits={"max_tasks": max_tasks},
                   recording={"segment_seconds": 2, "compositor": "cpu", "mix_latency_ms": 1000},
                   storage=storage_config(relay.port, spool_capacity_mb=spool_mb, stranded_after_attempts=2,
                                          drain_timeout_seconds=30))
        prom = Prometheus(tmp_path / "prometheus", d.host)
        dash = dashboard()
        instances = wait_until(lambda: prom.api("label/instance/values", **{"match[]": "kiroku_tasks"}), 20, 0.2,
                               "the instance variable's values (label_values(kiroku_tasks, instance))")
        assert instances == [d.host], instances
        # Grafana sends a selected value regex-escaped; inside a PromQL string
        # the backslashes are escaped again.
        watch = PanelWatch(prom, dashboard_queries(dash), {
            "instance": re.escape(d.host).replace("\\", "\\\\"),
            # Grafana's $__rate_interval: at least 4 scrape intervals.
            "__rate_interval": "20s",
        })
        snapshots = [d.metrics_text()]
        api = d.sdk()

        # A publisher that ignores key-frame requests: recorders that join
        # mid-GOP drop frames until its next key frame (every 2 s). They join
        # 2.5 s in: within a track's first 2 s the room would hand them the
        # track from its start (room/head.rs), and nothing would drop.
        room = "7101"
        pub = Publisher(whip_url(d.url, APP_ID, room, "alice"), fps=15, keyframe_interval=2.0,
                        ignore_keyframe_requests=True).start(timeout=15)
        time.sleep(max(0.0, pub.started_at + 2.5 - time.time()))
        single = api.create(create_params(room=room, StorageParams=cloud_storage(["dash"])))
        mixed_params = create_params(room=room, mode=2)
        mixed_params["MixTranscodeParams"] = {
            "VideoParams": {"Width": 320, "Height": 180, "Fps": 15, "BitRate": 300_000, "Gop": 2},
            "AudioParams": {"SampleRate": 1, "Channel": 1, "BitRate": 48000},
        }
        mixed = api.create(mixed_params)
        idle = api.create(create_params(room="7102"))
        # The box is full: a fourth create is refused, and once Prometheus has
        # seen that counter, another one makes KirokuCapacityExhausted active.
        refused = api.error("CreateCloudRecording", create_params(room="7103"))
        assert refused.code == "FailedOperation.RestrictedConcurrency", (refused.code, refused.message)
        wait_until(lambda: prom.query('kiroku_tasks_refused_total{reason="max_tasks"}'), 20, 0.2,
                   "Prometheus scraping the first refusal")
        assert api.error("CreateCloudRecording", create_params(room="7103")).code == refused.code

        # The capacity panels divide by the box's own limits.max_tasks
        # (kiroku_limit_max_tasks): 3 live tasks of 3 read as 100 %.
        for title in ("Capacity used per box", "Capacity used"):
            expr = watch.panel_query(title)
            wait_until(lambda: [float(s["value"][1]) for s in prom.query(expr)] == [1.0], 20, 0.5,
                       f"{title}: {expr} reading 1 (3 tasks of limits.max_tasks = {max_tasks})")

        # Everything is under way: mixed stages timed, frames dropped, files stranded.
        def live() -> bool:
            text = d.metrics_text()
            snapshots.append(text)
            watch.poll()
            return (total(text, "kiroku_mix_stage_seconds_total") > 0
                    and total(text, "kiroku_ingest_frame_drops_total") > 0
                    and metric_value(text, "kiroku_upload_stranded_files") > 0
                    and metric_value(text, "kiroku_recorder_segments_total") > 0)
        wait_until(live, 60, 0.5, "mixed stages timed, frames dropped and files stranded")

        def provoked() -> dict | None:
            active = prom.active_alerts()
            if {"KirokuUploadsStranded", "KirokuCapacityExhausted"} <= set(active):
                return active
            watch.poll()
            return None
        alerts = wait_until(provoked, 30, 0.5, "KirokuUploadsStranded and KirokuCapacityExhausted active")
        assert "KirokuDown" not in alerts, alerts
        # The spool panels divide by the box's own storage.spool_capacity_mb
        # (kiroku_spool_capacity_bytes): the stranded files' bytes over 256 MiB.
        for title in ("Spool fill", "Spool used"):
            expr = watch.panel_query(title)

            def spool_ratio() -> tuple[float, float] | None:
                at = time.time()  # both queries read the same samples
                got = prom.api("query", query=expr, time=at)["result"]
                used = prom.api("query", query="kiroku_spool_used_bytes", time=at)["result"]
                if len(got) == 1 and len(used) == 1 and float(used[0]["value"][1]) > 0:
                    return float(got[0]["value"][1]), float(used[0]["value"][1]) / (spool_mb * 1024 * 1024)
                return None
            ratio, want = wait_until(spool_ratio, 20, 0.5, f"{title}: {expr} reading the spool's fill")
            assert ratio == pytest.approx(want) and 0 < ratio < 1, (title, ratio, want)
        snapshots.append(d.metrics_text())
        watch.poll()

        # S3 comes back; the recording ends; everything is uploaded.
        relay.restore()
        time.sleep(max(0.0, pub.started_at + 8 - time.time()))
        pub.stop()
        for task in (single, mixed, idle):
            api.delete(task)
        for task in (single, mixed):
            receiver.wait_event(task, 305, 60)

        def drained() -> bool:
            text = d.metrics_text()
            snapshots.append(text)
            watch.poll()
            return (metric_value(text, "kiroku_upload_pending_files") == 0
                    and metric_value(text, "kiroku_upload_stranded_files") == 0
                    and metric_value(text, "kiroku_upload_files_total") > 0)
        wait_until(drained, 60, 0.5, "every file uploaded")
        assert moto.objects(f"dash/{single}/"), "the recording is in the bucket"

        # Every metric name is a series the live daemon exports, and every
        # label a selector matches on is one it carries.
        exported: dict[str, set[str]] = {}
        for text in snapshots:
            for name, labels in exported_series(text).items():
                exported.setdefault(name, set()).update(labels)
        used: dict[str, list[str]] = {}
        problems = []
        for where, expr in dashboard_queries(dash) + rule_queries():
            selectors = promql_selectors(expr)
            if not selectors:
                problems.append(f"{where}: no metric name found in {expr!r}")
            for name, labels in selectors:
                used.setdefault(name, []).append(where)
                if name in PROMETHEUS_SERIES:
                    assert where.startswith("rule "), f"{where}: {name} is for alert rules only"
                    continue
                if name not in exported:
                    families = {n for n in exported if name.startswith(n)}
                    problems.append(f"{where}: {name} is not exported by the daemon"
                                    + (f" (series with that prefix: {sorted(families)})" if families else ""))
                    continue
                unknown = labels - exported[name] - TARGET_LABELS
                if unknown:
                    problems.append(f"{where}: {name} has no label {sorted(unknown)} "
                                    f"(it has {sorted(exported[name])})")
        assert not problems, "\n".join(problems)
        print(f"metrics used by the dashboard and the rules ({len(used)}):", ", ".join(sorted(used)))

        # Every dashboard query has returned data at some point of the recording.
        try:
            wait_until(lambda: watch.poll() == 0, 60, 1.0, "every dashboard query returning data")
        except AssertionError as e:
            targets = [(t["health"], t["lastError"]) for t in prom.api("targets")["activeTargets"]]
            raise AssertionError(f"{e}\nstill empty: {json.dumps(watch.waiting, indent=1)}\n"
                                 f"scrape target: {targets}\nprometheus log:\n{prom.log_tail()}") from None

        # Prometheus evaluated every rule without error against the live daemon.
        groups = prom.api("rules")["groups"]
        evaluated = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(evaluated) == {r["alert"] for r in rules()}, sorted(evaluated)
        bad = {n: r.get("lastError") for n, r in evaluated.items() if r["health"] != "ok"}
        assert not bad, bad
    finally:
        if pub is not None and pub.stopped_at is None:
            pub.stop()
        if prom is not None:
            prom.stop()
        relay.cut()
        moto.stop()
