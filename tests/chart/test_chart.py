"""Tests of the permd Helm chart (charts/permd) and of its permd.sidecar templates.

Run through .ci/chart-test.sh, which installs helm-python-sdk (Helm v4 as a library: no helm
binary, no cluster), kubernetes-validate, pytest and pyyaml into a venv.

For every charts/permd/ci/*-values.yaml: strict lint, a client-side dry-run install (the
rendered manifest), schema validation of every rendered object with kubernetes-validate in
strict mode, and assertions on content. ServiceMonitor and PodMonitor are CRDs
(monitoring.coreos.com/v1) that kubernetes-validate has no schema for: for those kinds only,
the schema validation is skipped and their shape is checked here instead.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate.utils as kv
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "permd"
APP_CHART = Path(__file__).resolve().parent / "app"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "permd-test"
RELEASE = "rel"

# The newest Kubernetes version kubernetes-validate ships schemas for (1.37 with 1.37.0).
K8S_VERSION = kv.latest_version()
CRD_KINDS = {"ServiceMonitor", "PodMonitor"}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet"}

MINIMAL = {"config": {"source": "https://control.example.com/base"}}
ADMIN_PORT = 7768
ADMIN_ADDR = f"0.0.0.0:{ADMIN_PORT}"


# ----------------------------------------------------------------------------- helpers


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        _merge_into(out, copy.deepcopy(layer))
    return out


def _merge_into(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge_into(dst[key], value)
        else:
            dst[key] = value


def render(values: dict[str, Any] | None, chart: Path = CHART) -> list[dict[str, Any]]:
    """Client-side dry-run install; returns the rendered objects."""
    with helm.Config(namespace=NAMESPACE) as cfg:
        release = cfg.install(str(chart), RELEASE, values, dry_run="client", namespace=NAMESPACE)
    docs = [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]
    assert docs, "the chart rendered nothing"
    return docs


def lint_errors(values: dict[str, Any] | None, chart: Path = CHART, **kw: Any) -> list[str]:
    report = helm.lint(str(chart), values, strict=True, **kw)
    problems = [m["error"] for m in report["messages"] if m["severity"] >= 2]
    return list(report["errors"]) + problems


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}, got {len(found)}"
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def validate_manifests(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            check_monitor_shape(doc)
            continue
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as err:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} is not a valid Kubernetes "
                f"{K8S_VERSION} object: {err.message} at {list(err.absolute_path)}"
            )


def check_monitor_shape(doc: dict[str, Any]) -> None:
    """No schema for the prometheus-operator CRDs here: check what matters by hand."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = doc["spec"]
    assert spec["selector"].get("matchLabels") or spec["selector"].get("matchExpressions")
    endpoints = spec["endpoints"] if doc["kind"] == "ServiceMonitor" else spec["podMetricsEndpoints"]
    assert endpoints, "no scrape endpoint"
    for ep in endpoints:
        assert ep["path"] == "/metrics"
        assert ep["scheme"] == "http"
        assert isinstance(ep["port"], str) and ep["port"]
        assert re.fullmatch(r"[0-9]+[smh]", ep["interval"])
    # Scrapes go to the admin listener, never to the decision port.
    if doc["kind"] == "ServiceMonitor":
        assert endpoints[0]["port"] == "admin"
    else:
        assert endpoints[0]["port"] == "permd-admin"


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in WORKLOAD_KINDS]


def ports_of(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def on_loopback(addr: str) -> bool:
    """Reachable from the pod only: a loopback TCP address or a Unix socket."""
    return addr.startswith(("127.0.0.1:", "unix:/"))


def check_sidecar_addresses(c: dict[str, Any], *, unix: bool = False) -> None:
    """A sidecar's decision API (HTTP, gRPC) stays in the pod; only the admin port is on the pod IP."""
    env = env_of(c)
    if unix:
        assert env["PERMD_HTTP_ADDR"] == "unix:/var/run/permd/http.sock"
        assert env["PERMD_GRPC_ADDR"] == "unix:/var/run/permd/grpc.sock"
    else:
        assert env["PERMD_HTTP_ADDR"] == "127.0.0.1:7766"
        assert env["PERMD_GRPC_ADDR"] == "127.0.0.1:7767"
    assert env["PERMD_ADMIN_ADDR"] == ADMIN_ADDR
    for name in ("PERMD_HTTP_ADDR", "PERMD_GRPC_ADDR"):
        assert on_loopback(env[name]) and not env[name].startswith("0.0.0.0"), (name, env[name])
    # The pod IP gets the admin port and nothing else.
    assert ports_of(c) == {"permd-admin": ADMIN_PORT}


def check_permd_container(c: dict[str, Any], *, probes: bool = True, config_volume: bool = True) -> None:
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/var/cache/permd"]["name"] == "permd-cache"
    if config_volume:
        assert mounts["/etc/permd"]["readOnly"] is True
        assert c["args"] == ["serve", "--config", "/etc/permd/permd.yaml"]
    # The admin listener is on the pod IP in every mode.
    assert env_of(c)["PERMD_ADMIN_ADDR"] == ADMIN_ADDR
    assert ports_of(c)["permd-admin"] == ADMIN_PORT
    if probes:
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            port = c[probe]["httpGet"]["port"]
            assert port == "permd-admin", (probe, port)
            assert ports_of(c)[port] == ADMIN_PORT
    else:
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert probe not in c


# ----------------------------------------------------------------------------- per ci file


@pytest.fixture(scope="module", params=CI_VALUES, ids=[p.name for p in CI_VALUES])
def ci_case(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    values = load_values(request.param)
    return values, render(values)


def test_ci_values_exist() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"sidecar-values.yaml", "deployment-values.yaml", "daemonset-values.yaml"} <= names
    assert any("webhook" in n for n in names)


@pytest.mark.parametrize("values_file", CI_VALUES, ids=[p.name for p in CI_VALUES])
def test_lint_strict(values_file: Path) -> None:
    assert lint_errors(load_values(values_file)) == []


def test_manifests_are_valid_kubernetes(ci_case: tuple[dict, list]) -> None:
    _, docs = ci_case
    validate_manifests(docs)


def test_common_content(ci_case: tuple[dict, list]) -> None:
    values, docs = ci_case
    cm = one(docs, "ConfigMap", f"{RELEASE}-permd-config")
    cfg = yaml.safe_load(cm["data"]["permd.yaml"])
    assert cfg["source"] == values["config"]["source"]
    assert cfg["cache_dir"] == "/var/cache/permd"
    # The addresses are per container (PERMD_*_ADDR), not in the shared file.
    assert not {"http_addr", "grpc_addr", "admin_addr"} & set(cfg)
    assert not any("key" in k and k != "api_key_file" for k in cfg), cfg
    if values.get("snapshot"):
        assert cm["data"]["snapshot.yaml"] == values["snapshot"]

    # The API key never shows in clear outside its Secret.
    key = values.get("apiKey", {}).get("value")
    if key:
        for doc in docs:
            if doc["kind"] != "Secret":
                assert key not in json.dumps(doc), f"API key in clear in {doc['kind']}"
        secret = one(docs, "Secret")
        assert base64.b64decode(secret["data"]["api-key"]).decode() == key
    else:
        assert not of_kind(docs, "Secret")

    for workload, template in pod_templates(docs):
        if workload["metadata"]["name"].endswith("-webhook"):
            continue
        ann = template["metadata"]["annotations"]
        assert re.fullmatch(r"[0-9a-f]{64}", ann["checksum/permd-config"])
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/port"] == str(ADMIN_PORT)
        assert ann["prometheus.io/path"] == "/metrics"
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        c = container(spec, "permd")
        check_permd_container(c)
        env = env_of(c)
        # A shared PDP must be reachable from other pods.
        assert env["PERMD_HTTP_ADDR"] == "0.0.0.0:7766"
        assert env["PERMD_GRPC_ADDR"] == "0.0.0.0:7767"
        assert ports_of(c) == {"permd-http": 7766, "permd-grpc": 7767, "permd-admin": ADMIN_PORT}
        secret_name = values.get("apiKey", {}).get("existingSecret") or f"{RELEASE}-permd-api-key"
        assert env["PERMD_API_KEY"]["secretKeyRef"]["name"] == secret_name
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["permd-config"]["configMap"]["name"] == cm["metadata"]["name"]
        assert "emptyDir" in volumes["permd-cache"]


# ----------------------------------------------------------------------------- per mode


def test_sidecar_mode_renders_only_config() -> None:
    docs = render(load_values(CHART / "ci" / "sidecar-values.yaml"))
    assert {d["kind"] for d in docs} == {"ConfigMap", "PodMonitor"}
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {"permd.io/sidecar": "true"}
    assert pm["spec"]["namespaceSelector"] == {"any": True}


def test_deployment_mode() -> None:
    docs = render(load_values(CHART / "ci" / "deployment-values.yaml"))
    dep = one(docs, "Deployment", f"{RELEASE}-permd")
    assert dep["spec"]["replicas"] == 3
    assert not of_kind(docs, "DaemonSet")
    svc = one(docs, "Service", f"{RELEASE}-permd")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["http"]["port"] == 7766 and ports["http"]["targetPort"] == "permd-http"
    assert ports["grpc"]["port"] == 7767 and ports["grpc"]["targetPort"] == "permd-grpc"
    assert set(ports) == {"http", "grpc"}  # admin: only on request (or for a ServiceMonitor)
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert "internalTrafficPolicy" not in svc["spec"]
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["example.com/team"] == "authz"


def test_daemonset_mode() -> None:
    docs = render(load_values(CHART / "ci" / "daemonset-values.yaml"))
    ds = one(docs, "DaemonSet", f"{RELEASE}-permd")
    assert not of_kind(docs, "Deployment")
    svc = one(docs, "Service", f"{RELEASE}-permd")
    assert svc["spec"]["internalTrafficPolicy"] == "Local"
    assert ds["spec"]["template"]["spec"]["tolerations"] == [{"operator": "Exists", "effect": "NoSchedule"}]
    cfg = yaml.safe_load(one(docs, "ConfigMap")["data"]["permd.yaml"])
    assert cfg["source_protocol"] == "permit" and cfg["max_staleness"] == "10m"
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == ds["spec"]["selector"]["matchLabels"]
    assert pm["metadata"]["labels"]["release"] == "prometheus"


def test_webhook_and_servicemonitor() -> None:
    values = load_values(CHART / "ci" / "webhook-servicemonitor-values.yaml")
    docs = render(values)
    mwc = one(docs, "MutatingWebhookConfiguration")
    assert "namespace" not in mwc["metadata"]
    (hook,) = mwc["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["clientConfig"]["caBundle"] == values["webhook"]["caBundle"]
    svc_ref = hook["clientConfig"]["service"]
    assert svc_ref == {"name": f"{RELEASE}-permd-webhook", "namespace": NAMESPACE, "path": "/mutate", "port": 443}
    assert hook["rules"] == [
        {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}
    ]
    assert hook["objectSelector"] == values["webhook"]["objectSelector"]
    assert hook["namespaceSelector"]["matchLabels"] == {"permd.io/injection": "enabled"}

    svc = one(docs, "Service", svc_ref["name"])
    assert svc["spec"]["ports"][0]["port"] == 443
    assert svc["spec"]["ports"][0]["targetPort"] == "webhook"
    dep = one(docs, "Deployment", svc_ref["name"])
    assert dep["spec"]["replicas"] == 2
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # The webhook's selector must not also select the shared permd pods, nor the reverse.
    shared = one(docs, "Deployment", f"{RELEASE}-permd")
    shared_labels = shared["spec"]["template"]["metadata"]["labels"]
    assert not (dep["spec"]["selector"]["matchLabels"].items() <= shared_labels.items())
    tpl = dep["spec"]["template"]
    wc = container(tpl["spec"], "inject-webhook")
    args = wc["args"]
    assert args[0] == "inject-webhook"
    assert args[args.index("--addr") + 1] == "0.0.0.0:8443"
    assert args[args.index("--tls-cert") + 1] == "/etc/permd-webhook/tls/tls.crt"
    assert args[args.index("--tls-key") + 1] == "/etc/permd-webhook/tls/tls.key"
    assert args[args.index("--sidecar-file") + 1] == "/etc/permd-webhook/sidecar/sidecar.json"
    assert wc["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "webhook", "scheme": "HTTPS"}
    assert wc["securityContext"]["readOnlyRootFilesystem"] is True
    vols = {v["name"]: v for v in tpl["spec"]["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "permd-webhook-tls"
    sidecar_cm = one(docs, "ConfigMap", vols["sidecar"]["configMap"]["name"])
    assert re.fullmatch(r"[0-9a-f]{64}", tpl["metadata"]["annotations"]["checksum/sidecar"])

    # What the webhook injects: {"containers": [...], "volumes": [...]}, valid objects.
    sidecar = json.loads(sidecar_cm["data"]["sidecar.json"])
    assert set(sidecar) == {"containers", "volumes"}
    (c,) = sidecar["containers"]
    assert c["name"] == "permd"
    check_permd_container(c, config_volume=False)
    assert c["args"] == ["serve"]
    env = env_of(c)
    assert env["PERMD_SOURCE"] == values["config"]["source"]
    assert env["PERMD_CACHE_DIR"] == "/var/cache/permd"
    assert env["PERMD_MAX_BODY_BYTES"] == "1048576"
    check_sidecar_addresses(c)
    assert env["PERMD_API_KEY"]["secretKeyRef"]["name"] == "permd-upstream"
    assert [v["name"] for v in sidecar["volumes"]] == ["permd-cache"]
    fake_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                "spec": {"containers": sidecar["containers"], "volumes": sidecar["volumes"]}}
    validate_manifests([fake_pod])

    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"] == shared["spec"]["selector"]["matchLabels"]
    # The ServiceMonitor scrapes the Service's admin port, which it turns on.
    shared_svc = one(docs, "Service", f"{RELEASE}-permd")
    svc_ports = {p["name"]: p for p in shared_svc["spec"]["ports"]}
    assert svc_ports["admin"]["port"] == ADMIN_PORT and svc_ports["admin"]["targetPort"] == "permd-admin"
    assert sm["spec"]["endpoints"][0]["port"] == "admin"
    assert sm["metadata"]["labels"]["release"] == "prometheus"


# ----------------------------------------------------------------------------- values behaviour


def test_checksum_follows_config() -> None:
    base = load_values(CHART / "ci" / "deployment-values.yaml")

    def checksum(values: dict[str, Any]) -> str:
        dep = one(render(values), "Deployment")
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/permd-config"]

    first = checksum(base)
    assert checksum(base) == first
    assert checksum(merged(base, {"config": {"log_level": "warn"}})) != first
    assert checksum(merged(base, {"replicaCount": 5})) == first


def test_schema_is_strict() -> None:
    assert lint_errors(merged(MINIMAL, {"bogus": True}))
    assert lint_errors(merged(MINIMAL, {"mode": "statefulset"}))
    assert lint_errors(merged(MINIMAL, {"image": {"extra": 1}}))
    # No place for a secret in the config file.
    with pytest.raises(helm.HelmError, match="api_key"):
        render(merged(MINIMAL, {"config": {"api_key": "pk_live_secret"}}))
    with pytest.raises(helm.HelmError, match="tlsSecretName"):
        render(merged(MINIMAL, {"webhook": {"enabled": True}}))


def test_source_is_required() -> None:
    with pytest.raises(helm.HelmError, match="config.source is required"):
        render({})


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix-socket"])
def test_injected_sidecar_keeps_decisions_on_loopback(unix: bool) -> None:
    values = merged(MINIMAL, {"mode": "sidecar", "unixSocket": {"enabled": unix},
                              "webhook": {"enabled": True, "tlsSecretName": "t"}})
    docs = render(values)
    sidecar = json.loads(one(docs, "ConfigMap", f"{RELEASE}-permd-webhook-sidecar")["data"]["sidecar.json"])
    (c,) = sidecar["containers"]
    check_permd_container(c, config_volume=False)
    check_sidecar_addresses(c, unix=unix)


def test_sidecar_mode_pod_monitor_scrapes_admin_port() -> None:
    docs = render(load_values(CHART / "ci" / "sidecar-values.yaml"))
    (ep,) = one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "permd-admin" and ep["path"] == "/metrics"


def test_admin_port_is_configurable() -> None:
    docs = render(merged(MINIMAL, {"mode": "deployment", "admin": {"port": 9090},
                                   "service": {"exposeAdmin": True, "adminPort": 19090}}))
    tpl = one(docs, "Deployment")["spec"]["template"]
    c = container(tpl["spec"], "permd")
    assert env_of(c)["PERMD_ADMIN_ADDR"] == "0.0.0.0:9090"
    assert ports_of(c)["permd-admin"] == 9090
    assert c["readinessProbe"]["httpGet"]["port"] == "permd-admin"
    assert tpl["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert ports["admin"]["port"] == 19090 and ports["admin"]["targetPort"] == "permd-admin"
    validate_manifests(docs)


def test_admin_port_must_not_clash() -> None:
    with pytest.raises(helm.HelmError, match="admin.port"):
        render(merged(MINIMAL, {"mode": "deployment", "config": {"http_addr": "0.0.0.0:7768"}}))
    with pytest.raises(helm.HelmError, match="admin.port"):
        render(merged(MINIMAL, {"mode": "deployment", "admin": {"port": 7767}}))


def test_expose_http_is_gone() -> None:
    # The old opt-out-of-loopback switch is rejected rather than silently ignored.
    assert lint_errors(merged(MINIMAL, {"sidecar": {"exposeHttp": True}}))
    assert lint_errors(merged(MINIMAL, {"admin": {"port": 0}}))
    assert lint_errors(merged(MINIMAL, {"admin": {"bogus": 1}}))
    assert lint_errors(merged(MINIMAL, {"config": {"admin_addr": "0.0.0.0:7768"}}))


def test_sidecar_http_on_pod_ip_is_an_explicit_opt_in() -> None:
    values = merged(MINIMAL, {"config": {"http_addr": "0.0.0.0:7766"},
                              "webhook": {"enabled": True, "tlsSecretName": "t"}})
    sidecar = json.loads(one(render(values), "ConfigMap", f"{RELEASE}-permd-webhook-sidecar")["data"]["sidecar.json"])
    (c,) = sidecar["containers"]
    assert env_of(c)["PERMD_HTTP_ADDR"] == "0.0.0.0:7766"
    assert ports_of(c) == {"permd-http": 7766, "permd-admin": ADMIN_PORT}
    check_permd_container(c, config_volume=False)  # probes stay on the admin port


def test_probes_can_be_disabled() -> None:
    values = merged(MINIMAL, {"probes": {"enabled": False}, "webhook": {"enabled": True, "tlsSecretName": "t"}})
    sidecar = json.loads(one(render(values), "ConfigMap", f"{RELEASE}-permd-webhook-sidecar")["data"]["sidecar.json"])
    check_permd_container(sidecar["containers"][0], probes=False, config_volume=False)


def test_shared_modes_ignore_unix_socket() -> None:
    docs = render(merged(MINIMAL, {"mode": "deployment", "unixSocket": {"enabled": True}}))
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert "permd-socket" not in {v["name"] for v in spec["volumes"]}
    assert env_of(container(spec, "permd"))["PERMD_GRPC_ADDR"] == "0.0.0.0:7767"


def test_servicemonitor_needs_a_service() -> None:
    with pytest.raises(helm.HelmError, match="serviceMonitor"):
        render(merged(MINIMAL, {"metrics": {"serviceMonitor": {"enabled": True}}}))


# ----------------------------------------------------------------------------- the sidecar template in an app chart


@pytest.fixture(scope="module")
def app_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/chart/app, with its file:// dependency on charts/permd resolved offline by Helm."""
    dest = tmp_path_factory.mktemp("app") / "app"
    shutil.copytree(APP_CHART, dest, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    chart_yaml = dest / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text().replace("file://../../../charts/permd", f"file://{CHART}"))
    helm.dependency_update(str(dest), skip_refresh=True)
    assert [d["status"] for d in helm.dependency_list(str(dest))] == ["ok"]
    return dest


def test_app_chart_lints(app_chart: Path) -> None:
    assert lint_errors(None, chart=app_chart, with_subcharts=True) == []


def test_app_chart_gets_permd_sidecar(app_chart: Path) -> None:
    docs = render(None, chart=app_chart)
    validate_manifests(docs)
    assert {d["kind"] for d in docs} == {"ConfigMap", "Deployment"}
    cm = one(docs, "ConfigMap")
    dep = one(docs, "Deployment")
    tpl = dep["spec"]["template"]
    spec = tpl["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", "permd"]
    c = container(spec, "permd")
    check_permd_container(c)
    env = env_of(c)
    check_sidecar_addresses(c, unix=True)  # decisions on the shared sockets, admin on the pod IP
    assert env["PERMD_API_KEY"]["secretKeyRef"] == {"name": "app-permd-api-key", "key": "api-key"}
    # The Unix socket directory is shared by the app and permd.
    app = container(spec, "app")
    assert {"name": "permd-socket", "mountPath": "/var/run/permd"} in app["volumeMounts"]
    assert {"name": "permd-socket", "mountPath": "/var/run/permd"} in c["volumeMounts"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(volumes) == {"permd-config", "permd-cache", "permd-socket"}
    assert volumes["permd-config"]["configMap"]["name"] == cm["metadata"]["name"] == f"{RELEASE}-permd-config"
    cfg = yaml.safe_load(cm["data"]["permd.yaml"])
    assert cfg["source"] == "https://control.example.com/base" and cfg["max_staleness"] == "5m"
    assert c["image"] == "registry.example.com/permd/permd:0.1.0"  # the permd chart's appVersion
    labels = tpl["metadata"]["labels"]
    assert labels["permd.io/sidecar"] == "true"
    ann = tpl["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", ann["checksum/permd-config"])
    assert ann["prometheus.io/port"] == str(ADMIN_PORT)

    # The app pod's checksum is the one permd's own pods get for the same config.
    shared = render(merged(yaml.safe_load((app_chart / "values.yaml").read_text())["permd"], {"mode": "deployment"}))
    shared_ann = one(shared, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert shared_ann["checksum/permd-config"] == ann["checksum/permd-config"]

    # ... and it changes with the config.
    changed = render({"permd": {"config": {"log_level": "debug"}}}, chart=app_chart)
    changed_ann = one(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert changed_ann["checksum/permd-config"] != ann["checksum/permd-config"]

    # Without the sockets, the decision API is on loopback.
    tcp = render({"permd": {"unixSocket": {"enabled": False}}}, chart=app_chart)
    tcp_spec = one(tcp, "Deployment")["spec"]["template"]["spec"]
    tcp_c = container(tcp_spec, "permd")
    check_permd_container(tcp_c)
    check_sidecar_addresses(tcp_c)
