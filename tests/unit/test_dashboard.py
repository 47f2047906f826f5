"""deploy/grafana-dashboard.json: valid, laid out without overlaps, and every query names a metric
the exporter's collector serves (read here from a Redis stand-in with an empty fleet: every
family is still declared, with its type)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from celery_agent.exporter import FleetCollector
from celery_agent.keys import Keys

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
METRIC = re.compile(r"\bcelery_agent_\w+")


class EmptyRedis:
    """Answers the collector's reads as a Redis with no fleet in it would."""

    def __init__(self) -> None:
        self.replies: list[Any] = []

    def pipeline(self, transaction: bool = True) -> EmptyRedis:
        return self

    def execute(self) -> list[Any]:
        replies, self.replies = self.replies, []
        return replies

    def zrange(self, *args: Any, **kw: Any) -> None:
        self.replies.append([])

    def hgetall(self, key: str) -> None:
        self.replies.append({})

    def llen(self, key: str) -> None:
        self.replies.append(0)


def served() -> dict[str, str]:
    """Every series name the collector serves -> its family's type."""
    registry = CollectorRegistry(auto_describe=False)
    client = EmptyRedis()
    registry.register(FleetCollector(client, Keys(), client, ["gpu"]))
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)", generate_latest(registry).decode(), re.M))
    names = {}
    for name, kind in types.items():  # (a counter's TYPE line names it with _total or without)
        ends = {"counter": [""] if name.endswith("_total") else ["_total"],
                "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])  # fmt: skip
        names |= {name + end: kind for end in ends}
    return names


def panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p.get("targets", [])]


def test_every_metric_the_dashboard_queries_is_served_by_the_collector():
    queried = {m for e in exprs() for m in METRIC.findall(e)}
    missing = queried - set(served())
    assert not missing, f"the dashboard queries metrics the exporter never serves: {missing}"
    for name in ("celery_agent_run_duration_seconds_bucket", "celery_agent_runs_lost_total",
                 "celery_agent_run_queue_wait_seconds_bucket",
                 "celery_agent_env_cache_hits_total", "celery_agent_env_cache_misses_total",
                 "celery_agent_env_build_seconds_bucket"):  # fmt: skip
        assert name in queried, f"no panel shows {name}"


def test_quantiles_are_taken_of_histogram_buckets_summed_by_le():
    kinds = served()
    quantiles = [e for e in exprs() if "histogram_quantile" in e]
    assert len(quantiles) >= 6
    for expr in quantiles:
        (bucket,) = METRIC.findall(expr)
        assert bucket.endswith("_bucket") and kinds[bucket] == "histogram", expr
        assert re.search(r"sum by \([\w, ]*\ble\b[\w, ]*\) \(rate\(", expr), expr


def test_panels_have_unique_ids_a_data_source_and_do_not_overlap():
    all_panels = panels()
    assert len({p["id"] for p in all_panels}) == len(all_panels)
    taken: set[tuple[int, int]] = set()
    for p in all_panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"panel {p['title']!r} overlaps another"
        taken |= cells
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]


def test_the_keda_scaler_queries_metrics_the_collector_serves_with_their_labels():
    import yaml

    path = DASHBOARD.parent / "k8s" / "keda" / "gpu-worker.yaml"
    (trigger,) = yaml.safe_load(path.read_text())["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    names = set(METRIC.findall(query))
    assert names and names <= set(served()), names - set(served())
    for name, labels in re.findall(r"(celery_agent_\w+)\{([^}]*)\}", query):
        assert [label.split("=")[0] for label in labels.split(",")] == ["queue"], name
