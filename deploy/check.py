#!/usr/bin/env python3
"""Checks what deploy/ ships for monitoring that nothing else reads.

- deploy/grafana/tokengate.json loads as JSON and is a dashboard that can be
  imported anywhere: a Prometheus datasource variable, every panel, query and
  annotation on it, unique panel ids, panels inside the 24-column grid and
  not on top of each other.
- Every PromQL query of the dashboard (panels, annotations, variables)
  parses: they are written, with Grafana's variables replaced, into a rule
  file for `promtool check rules`.
- Every tokengate_* metric named by the dashboard or by
  deploy/prometheus/alerts.yaml is one the gateway exports (the names agreed
  for /metrics, below): a misspelt name would show "No data" or never fire,
  and nothing else would notice.

Run from the repository root: python3 deploy/check.py (CI does, after
promtool check rules and promtool test rules). Standard library only.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

DASHBOARD = "deploy/grafana/tokengate.json"
ALERTS = "deploy/prometheus/alerts.yaml"

# Metric names as /metrics writes them (counters with _total; histograms by
# their base name). Keep in step with the README's "Metrics" table.
METRICS = {
    "tokengate_requests_total",
    "tokengate_upstream_failures_total",
    "tokengate_upstream_duration_seconds",
    "tokengate_reloads_total",
    "tokengate_token_file_read_failures_total",
    "tokengate_tokens_loaded",
    "tokengate_last_reload_success_timestamp_seconds",
    "tokengate_upstream_up",
    "tokengate_log_lines_dropped_total",
    "tokengate_tls_reloads_total",
    "tokengate_rest_token_renewals_total",
    "tokengate_rate_limit_store_errors_total",
    "tokengate_rate_limit_store_seconds",
}
HISTOGRAMS = {"tokengate_upstream_duration_seconds", "tokengate_rate_limit_store_seconds"}

# What Grafana puts in place of its variables, for parsing only.
GRAFANA_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def fail(errors, msg):
    errors.append(msg)


def metric_names(text):
    names = set()
    for name in re.findall(r"\btokengate_[a-z0-9_]+", text):
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)] if name.endswith(suffix) else None
            if base in HISTOGRAMS:
                name = base
        names.add(name)
    return names


def grafana_to_promql(expr):
    """Replaces $var, ${var} and ${var:format} by something PromQL accepts."""

    def sub(m):
        name = m.group(1) or m.group(2)
        return GRAFANA_VARS.get(name, ".*")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


def check_dashboard(errors):
    with open(DASHBOARD, encoding="utf-8") as f:
        try:
            dash = json.load(f)
        except json.JSONDecodeError as e:
            fail(errors, f"{DASHBOARD}:{e.lineno}:{e.colno}: not JSON: {e.msg}")
            return None

    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail(errors, "templating: no datasource variable named 'datasource' of type prometheus")

    queries = []  # (where, PromQL)
    for name, var in variables.items():
        if var.get("type") != "query":
            continue
        if var.get("datasource") != DATASOURCE:
            fail(errors, f"variable {name}: datasource is not ${{datasource}}")
        q = var.get("query", {})
        q = q.get("query", "") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q)
        if not m:
            fail(errors, f"variable {name}: expected label_values(selector, label), got {q!r}")
        else:
            queries.append((f"variable {name}", m.group(1)))

    for a in dash.get("annotations", {}).get("list", []):
        if "expr" in a:
            if a.get("datasource") != DATASOURCE:
                fail(errors, f"annotation {a.get('name')}: datasource is not ${{datasource}}")
            queries.append((f"annotation {a.get('name')}", a["expr"]))

    ids = set()
    cells = {}
    for p in dash.get("panels", []):
        pid, title = p.get("id"), p.get("title")
        where = f"panel {pid} ({title})"
        if pid in ids:
            fail(errors, f"{where}: id used twice")
        ids.add(pid)
        g = p.get("gridPos", {})
        x, y, w, h = (g.get(k) for k in ("x", "y", "w", "h"))
        if None in (x, y, w, h) or x < 0 or w <= 0 or h <= 0 or x + w > 24:
            fail(errors, f"{where}: gridPos {g} is outside the 24-column grid")
            continue
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                if (cx, cy) in cells:
                    fail(errors, f"{where}: overlaps {cells[(cx, cy)]}")
                    break
                cells[(cx, cy)] = where
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        if not p.get("description"):
            fail(errors, f"{where}: no description")
        if p.get("datasource") != DATASOURCE:
            fail(errors, f"{where}: datasource is not ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            fail(errors, f"{where}: no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            fail(errors, f"{where}: refId used twice")
        for t in targets:
            if t.get("datasource") != DATASOURCE:
                fail(errors, f"{where} {t.get('refId')}: datasource is not ${{datasource}}")
            if not t.get("expr"):
                fail(errors, f"{where} {t.get('refId')}: empty expr")
            else:
                queries.append((f"{where} {t.get('refId')}", t["expr"]))
    return queries


def check_promql(errors, queries):
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
        for i, (_, expr) in enumerate(queries)
    ]
    # JSON is YAML, so the rule file needs no YAML library.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)
        path = f.name
    try:
        r = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        # promtool names the rule by its position: say which query that was.
        for m in re.finditer(r"group \"dashboard\", rule (\d+)", out):
            i = int(m.group(1)) - 1
            if 0 <= i < len(queries):
                out += f"\n  rule {i + 1} is {queries[i][0]}: {queries[i][1]}"
        fail(errors, "dashboard queries do not all parse:\n" + out)


def check_metric_names(errors, queries):
    dash_names = set()
    for _, expr in queries:
        dash_names |= metric_names(expr)
    with open(ALERTS, encoding="utf-8") as f:
        alert_names = metric_names(f.read())
    for source, names in ((DASHBOARD, dash_names), (ALERTS, alert_names)):
        for name in sorted(names - METRICS):
            fail(errors, f"{source}: {name} is not a metric the gateway exports")
    unused = METRICS - dash_names
    if unused:
        fail(errors, f"{DASHBOARD}: shows nothing of {', '.join(sorted(unused))}")


def main():
    errors = []
    queries = check_dashboard(errors)
    if queries is not None:
        check_promql(errors, queries)
        check_metric_names(errors, queries)
    for e in errors:
        print(f"deploy/check.py: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"deploy/check.py: {DASHBOARD}: {len(queries)} queries parse; metric names of it and {ALERTS} known")
    return 0


if __name__ == "__main__":
    sys.exit(main())
