"""deploy/ as an operator uses it: the systemd unit passes `systemd-analyze verify`, the
Kubernetes manifests and the unit pass only flags that `proca-stats serve` has, the alert rules
pass `promtool check rules` and their own `promtool test rules`, and every metric the alerts
and the Grafana dashboard read is one a live server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from proca_stats.client import StatsClient
from proca_stats.server.api.grpc_service import SERVICE
from proca_stats.server.app import StatsServer
from proca_stats.server.settings import SETTINGS
from tests.support.servers import PROCA_STATS
from tests.support.waiting import wait_for
from tests.test_observability import exposition

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "proca-stats.service"
KUBERNETES = DEPLOY / "kubernetes"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "proca-stats.json"
INSTALLED_AT = "/opt/proca-stats/.venv/bin/proca-stats"  # where the unit expects it
METRIC = re.compile(r"\bproca_stats_[a-z0-9_]+")


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: apt-get install {package}")
    return found


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def manifests() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(KUBERNETES.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for document in yaml.safe_load_all(path.read_text())
    ]


def of_kind(kind: str) -> dict[str, Any]:
    (found,) = [m for m in manifests() if m["kind"] == kind]
    return found


def container() -> dict[str, Any]:
    (only,) = of_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def exec_start() -> list[str]:
    """The unit's ExecStart, its continued lines joined, split into words."""
    text = UNIT.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=").split()


@pytest.fixture(scope="module")
def serve_help() -> str:
    done = run(PROCA_STATS, "serve", "--help")
    assert done.returncode == 0, done.stderr
    return done.stdout


def flags(words: list[str]) -> set[str]:
    return {word.split("=", 1)[0] for word in words if word.startswith("--")}


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    verify = tool("systemd-analyze", "systemd")
    # verify insists that the executable exists: point it at the one installed here.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_AT, PROCA_STATS))
    done = run(verify, "verify", str(unit))
    # It reports a directive it cannot parse and ignores it, exit status 0: nothing may be said.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize(
    "words",
    [pytest.param(exec_start, id="systemd"), pytest.param(lambda: container()["args"], id="k8s")],
)
def test_every_flag_deploy_passes_exists(words: Callable[[], list[str]], serve_help: str) -> None:
    given = words()
    assert "serve" in given
    known = set(re.findall(r"--[a-z][a-z-]*", serve_help))
    unknown = sorted(flags(given) - known)
    assert not unknown, f"flags `proca-stats serve` does not have: {unknown}"


def test_every_variable_the_deployment_sets_is_read() -> None:
    names = [env["name"] for env in container()["env"]]
    assert names
    read = {name for s in SETTINGS if "serve" in s.commands for name in s.variables}
    unread = [name for name in names if name not in read]
    assert not unread, f"environment variables `proca-stats serve` does not read: {unread}"


def test_the_probes_ask_the_port_served_and_the_health_names_that_exist() -> None:
    spec = container()
    args = dict(a.split("=", 1) for a in spec["args"] if a.startswith("--") and "=" in a)
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert args["--listen"].rsplit(":", 1)[1] == str(ports["grpc"])
    assert args["--metrics-listen"].rsplit(":", 1)[1] == str(ports["metrics"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["grpc"]["port"] == ports["grpc"], probe
    assert spec["readinessProbe"]["grpc"]["service"] == SERVICE.full_name
    assert "service" not in spec["livenessProbe"]["grpc"]  # the overall status
    token_mount = spec["volumeMounts"][0]["mountPath"]
    assert args["--token-file"].startswith(token_mount + "/")


def test_the_service_and_the_budget_select_the_deployments_pods() -> None:
    labels = of_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert of_kind("Deployment")["spec"]["selector"]["matchLabels"] == labels
    assert of_kind("Service")["spec"]["selector"] == labels
    assert of_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    targets = {port["targetPort"] for port in of_kind("Service")["spec"]["ports"]}
    assert targets == {port["name"] for port in container()["ports"]}


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    present = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present


def test_the_alert_rules_pass_promtool() -> None:
    promtool = tool("promtool", "prometheus")
    checked = run(promtool, "check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(promtool, "test", "rules", "alerts.test.yml", cwd=ALERTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += [
        variable["query"]["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    return queries


def alert_queries() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_the_dashboards_queries_are_promql(tmp_path: Path) -> None:
    """Each panel's query, Grafana's variables given values, as a recording rule promtool
    parses."""
    promtool = tool("promtool", "prometheus")
    values = {"$__rate_interval": "5m", '"$instance"': '".*"'}
    rules = []
    for n, query in enumerate(q for q in dashboard_queries() if not q.startswith("label_values")):
        for variable, value in values.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        rules.append({"record": f"dashboard:query_{n}", "expr": query})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_panel_has_a_unique_id_and_the_dashboards_datasource() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])


@pytest.fixture
def exported(start_server: Callable[..., StatsServer], logical_url: str) -> set[str]:
    """The sample names a live server with the fan-out and the change feed on exports once it
    has answered calls."""
    server = start_server(
        logical_url, metrics_listen="127.0.0.1:0", fanout=True, change_feed="logical"
    )
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        client.increment(1, 2, "signature", new_supporter=True)
        client.get_stats(1)
    assert server.metrics_port is not None
    text = exposition(server.metrics_port)
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    return {line.split("{")[0].split()[0] for line in samples}


@pytest.mark.parametrize("queries", [dashboard_queries, alert_queries], ids=["grafana", "alerts"])
def test_every_metric_read_is_exported(
    exported: set[str], queries: Callable[[], list[str]]
) -> None:
    named = {name for query in queries() for name in METRIC.findall(query)}
    assert named
    missing = sorted(named - exported)
    assert not missing, f"metrics a live server does not export: {missing}"


def test_the_unit_runs_what_pip_installs() -> None:
    """ExecStart names the executable `pip install` puts into the virtual environment the
    unit's comment sets up, with the command `serve`."""
    assert exec_start()[:2] == [INSTALLED_AT, "serve"]
