"""The Grafana dashboard has a panel for every metric the gateway and the workers export."""

import json
import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from query_api import metrics as gateway_metrics
from streams import push_metrics
from streams.adapters import metrics as worker_metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def _metric_names() -> set[str]:
    names = set()
    for module in (gateway_metrics, worker_metrics, push_metrics):
        for value in vars(module).values():
            if isinstance(value, (Counter, Gauge, Histogram)):
                names.add(value._name)
    return names


def test_every_metric_has_a_panel() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = set(re.findall(r"tidings_[a-z_]+", exprs))
    missing = {n for n in _metric_names() if not any(u.startswith(n) for u in used)}
    assert not missing, f"no panel for {sorted(missing)}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
