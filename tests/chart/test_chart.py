"""Tests of the permd Helm chart (charts/permd) and of its permd.sidecar templates.

Run through .ci/chart-test.sh, which installs helm-python-sdk (Helm v4 as a library: no helm
binary, no cluster), kubernetes-validate, pytest and pyyaml into a venv.

For every charts/permd/ci/*-values.yaml: strict lint, a client-side dry-run install (the
rendered manifest), schema validation of every rendered object with kubernetes-validate in
strict mode, and assertions on content. ServiceMonitor and PodMonitor are CRDs
(monitoring.coreos.com/v1) that kubernetes-validate has no schema for: for those kinds only,
the schema validation is skipped and their shape is checked here instead.

The same for charts/permd-control (the control plane, `permd control`) with its
charts/permd-control/ci/*-values.yaml, its hook Job included; and the values its NOTES give for
charts/permd are fed back into charts/permd to check that sidecars follow its Service.
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
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "Certificate"}
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


def check_certificate_shape(doc: dict[str, Any]) -> None:
    """No schema for cert-manager's Certificate here: check what matters by hand."""
    assert doc["apiVersion"] == "cert-manager.io/v1"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    assert set(spec) <= {"secretName", "duration", "dnsNames", "usages", "issuerRef"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", spec["secretName"])
    assert spec["dnsNames"] and spec["issuerRef"]["name"]
    assert spec["issuerRef"]["kind"] in {"Issuer", "ClusterIssuer"}


def check_monitor_shape(doc: dict[str, Any]) -> None:
    """No schema for the prometheus-operator CRDs here: check what matters by hand."""
    if doc["kind"] == "Certificate":
        check_certificate_shape(doc)
        return
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


def check_hardened(c: dict[str, Any]) -> None:
    """Non-root, read-only root filesystem, no capabilities, bounded resources."""
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]


def check_permd_container(c: dict[str, Any], *, probes: bool = True, config_volume: bool = True) -> None:
    check_hardened(c)
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
    api_secrets = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == f"{RELEASE}-permd-api-key"]
    if key:
        for doc in docs:
            if doc["kind"] != "Secret":
                assert key not in json.dumps(doc), f"API key in clear in {doc['kind']}"
        (secret,) = api_secrets
        assert base64.b64decode(secret["data"]["api-key"]).decode() == key
    else:
        assert not api_secrets
    # A shared permd authenticates its clients; a NetworkPolicy guards its pods.
    if values.get("mode", "sidecar") != "sidecar":
        check_shared_auth(values, docs)

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


# ----------------------------------------------------------------------------- the control plane (charts/permd-control)

CONTROL_CHART = REPO / "charts" / "permd-control"
CONTROL_CI_VALUES = sorted((CONTROL_CHART / "ci").glob("*-values.yaml"))
CONTROL = f"{RELEASE}-permd-control"
CONTROL_MINIMAL = {"database": {"existingSecret": "permd-control-db"}}
# A URL with a password: it must show nowhere but in the Secret the chart makes from it.
DB_URL = "postgres://permd:Pa55-w0rd-only-in-the-secret@db.example:5432/permd?sslmode=require"
CONTROL_HTTP, CONTROL_GRPC = 7780, 7781
NOTES_VALUES = re.compile(r"^# --- charts/permd values ---\n(.*?)^# ---$", re.M | re.S)


class ControlRender:
    """charts/permd-control rendered: the release's objects, its hooks, its NOTES."""

    def __init__(self, values: dict[str, Any] | None) -> None:
        with helm.Config(namespace=NAMESPACE) as cfg:
            release = cfg.install(str(CONTROL_CHART), RELEASE, values, dry_run="client", namespace=NAMESPACE)
        self.docs = [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]
        self.notes: str = release["notes"]
        # The install's manifest leaves hooks out: render the templates to see them.
        templates = helm.Chart.load(str(CONTROL_CHART)).render(
            values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        self.hooks = [
            doc for path, text in sorted(templates.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text)
            if doc and "helm.sh/hook" in (doc["metadata"].get("annotations") or {})
        ]

    @property
    def everything(self) -> list[dict[str, Any]]:
        return self.docs + self.hooks

    def server(self) -> dict[str, Any]:
        """The control container of the Deployment."""
        return container(one(self.docs, "Deployment")["spec"]["template"]["spec"], "control")

    def sidecar_values(self) -> dict[str, Any]:
        """The charts/permd values NOTES.txt tells the operator to use."""
        found = NOTES_VALUES.search(self.notes)
        assert found, f"no charts/permd values in NOTES:\n{self.notes}"
        return yaml.safe_load(found.group(1))


def is_control_plane(c: dict[str, Any]) -> bool:
    return (c.get("args") or [None])[0] == "control" or any(
        e["name"].startswith("PERMD_CONTROL_") for e in c.get("env", []))


def containers_in(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for doc in docs:
        spec = doc.get("spec") or {}
        pod = spec.get("template", {}).get("spec") if doc["kind"] in WORKLOAD_KINDS | {"Job"} else None
        if pod:
            out += pod.get("initContainers", []) + pod["containers"]
        if doc["kind"] == "ConfigMap" and "sidecar.json" in doc.get("data", {}):
            out += json.loads(doc["data"]["sidecar.json"])["containers"]
    return out


def check_control_server(c: dict[str, Any], *, db_secret: str, db_key: str, no_migrate: bool = False) -> None:
    assert c["args"] == (["control", "--no-migrate"] if no_migrate else ["control"])
    assert ports_of(c) == {"http": CONTROL_HTTP, "grpc": CONTROL_GRPC}
    env = env_of(c)
    assert env["PERMD_CONTROL_HTTP_ADDR"] == f"0.0.0.0:{CONTROL_HTTP}"
    assert env["PERMD_CONTROL_GRPC_ADDR"] == f"0.0.0.0:{CONTROL_GRPC}"
    # The database URL comes from a Secret, never from a plain value.
    (db,) = [e for e in c["env"] if e["name"] == "PERMD_CONTROL_DATABASE"]
    assert "value" not in db
    assert db["valueFrom"] == {"secretKeyRef": {"name": db_secret, "key": db_key}}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    check_hardened(c)


@pytest.fixture(scope="module", params=CONTROL_CI_VALUES, ids=[p.name for p in CONTROL_CI_VALUES])
def control_case(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ControlRender]:
    values = load_values(request.param)
    return values, ControlRender(values)


def test_control_ci_values_exist() -> None:
    names = {p.name for p in CONTROL_CI_VALUES}
    assert {"existing-secret-values.yaml", "url-values.yaml", "migrate-job-values.yaml"} <= names


@pytest.mark.parametrize("values_file", CONTROL_CI_VALUES, ids=[p.name for p in CONTROL_CI_VALUES])
def test_control_lint_strict(values_file: Path) -> None:
    assert lint_errors(load_values(values_file), chart=CONTROL_CHART) == []


def test_control_manifests_are_valid_kubernetes(control_case: tuple[dict, ControlRender]) -> None:
    _, r = control_case
    validate_manifests(r.everything)


def test_control_common_content(control_case: tuple[dict, ControlRender]) -> None:
    values, r = control_case
    db = values["database"]
    db_secret = db.get("existingSecret") or f"{CONTROL}-database"
    db_key = db.get("secretKey", "url")
    job = values.get("migrate", {}).get("mode") == "job"

    dep = one(r.docs, "Deployment", CONTROL)
    assert dep["spec"]["replicas"] == values.get("replicas", 2)
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert [c["name"] for c in pod["containers"]] == ["control"]
    check_control_server(r.server(), db_secret=db_secret, db_key=db_key, no_migrate=job)

    svc = one(r.docs, "Service", CONTROL)
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {"http", "grpc"}
    assert (ports["http"]["port"], ports["http"]["targetPort"]) == (CONTROL_HTTP, "http")
    assert (ports["grpc"]["port"], ports["grpc"]["targetPort"]) == (CONTROL_GRPC, "grpc")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert one(r.docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]

    # No configuration object at all: nothing where a URL could leak.
    assert not of_kind(r.everything, "ConfigMap")
    secrets = of_kind(r.everything, "Secret")
    if db.get("url") and not db.get("existingSecret"):
        (secret,) = secrets
        assert secret["metadata"]["name"] == db_secret
        assert base64.b64decode(secret["data"][db_key]).decode() == db["url"]
        for doc in r.everything:
            if doc is not secret:
                assert db["url"] not in json.dumps(doc), f"database URL in clear in {doc['kind']}"
        assert db["url"] not in r.notes
    else:
        assert not secrets

    hooks = {d["kind"] for d in r.hooks}
    assert hooks == ({"Job"} if job else set())


def test_control_defaults() -> None:
    r = ControlRender(CONTROL_MINIMAL)
    dep = one(r.docs, "Deployment", CONTROL)
    assert dep["spec"]["replicas"] == 2
    c = r.server()
    check_control_server(c, db_secret="permd-control-db", db_key="url")
    env = env_of(c)
    # Left to permd's own defaults unless set.
    assert not {"PERMD_CONTROL_RATE_LIMIT_HOUR", "PERMD_CONTROL_RATE_LIMIT_MINUTE", "PERMD_CONTROL_RETENTION"} & set(env)
    assert not r.hooks and not of_kind(r.docs, "Secret")
    assert {d["kind"] for d in r.docs} == {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}
    (spread,) = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    validate_manifests(r.docs)


def test_control_database_url_only_in_its_secret() -> None:
    r = ControlRender({"database": {"url": DB_URL}})
    secret = one(r.docs, "Secret", f"{CONTROL}-database")
    assert base64.b64decode(secret["data"]["url"]).decode() == DB_URL
    check_control_server(r.server(), db_secret=f"{CONTROL}-database", db_key="url")
    for doc in r.everything:
        if doc is not secret:
            text = json.dumps(doc)
            assert DB_URL not in text and "Pa55-w0rd" not in text, f"database URL in clear in {doc['kind']}"
    assert "Pa55-w0rd" not in r.notes
    # existingSecret wins: no Secret is made from a url given as well.
    both = ControlRender({"database": {"url": DB_URL, "existingSecret": "db", "secretKey": "dsn"}})
    assert not of_kind(both.everything, "Secret")
    assert "Pa55-w0rd" not in json.dumps(both.everything)
    check_control_server(both.server(), db_secret="db", db_key="dsn")


def test_control_optional_settings() -> None:
    r = ControlRender(merged(CONTROL_MINIMAL, {"replicas": 5, "retention": "36h",
                                               "rateLimit": {"hour": 0, "minute": 250}}))
    assert one(r.docs, "Deployment")["spec"]["replicas"] == 5
    env = env_of(r.server())
    assert env["PERMD_CONTROL_RATE_LIMIT_HOUR"] == "0"  # 0: that limit off
    assert env["PERMD_CONTROL_RATE_LIMIT_MINUTE"] == "250"
    assert env["PERMD_CONTROL_RETENTION"] == "36h"
    validate_manifests(r.docs)


def test_control_migrate_job() -> None:
    r = ControlRender(merged(CONTROL_MINIMAL, {"migrate": {"mode": "job"}}))
    check_control_server(r.server(), db_secret="permd-control-db", db_key="url", no_migrate=True)
    job = one(r.hooks, "Job", f"{CONTROL}-migrate")
    assert not of_kind(r.docs, "Job")  # a hook, not a release object
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    # The chart's ServiceAccount does not exist yet when a pre-install hook runs.
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["args"] == ["control", "migrate"]
    assert env_of(c) == {"PERMD_CONTROL_DATABASE": {"secretKeyRef": {"name": "permd-control-db", "key": "url"}}}
    check_hardened(c)
    # The Service never routes to the Job's pod.
    selector = one(r.docs, "Service")["spec"]["selector"]
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    validate_manifests(r.hooks)

    # Other credentials for the migration (a role allowed DDL).
    owner = ControlRender(merged(CONTROL_MINIMAL, {"migrate": {"mode": "job", "existingSecret": "owner", "secretKey": "dsn"}}))
    (c,) = one(owner.hooks, "Job")["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["PERMD_CONTROL_DATABASE"] == {"secretKeyRef": {"name": "owner", "key": "dsn"}}
    check_control_server(owner.server(), db_secret="permd-control-db", db_key="url", no_migrate=True)

    # start (the default): no Job, the server migrates.
    assert not ControlRender(CONTROL_MINIMAL).hooks


def test_control_schema_is_strict() -> None:
    def rejected(values: dict[str, Any]) -> bool:
        return bool(lint_errors(values, chart=CONTROL_CHART))

    assert not rejected(CONTROL_MINIMAL)
    assert rejected(merged(CONTROL_MINIMAL, {"replicas": -1}))
    assert rejected(merged(CONTROL_MINIMAL, {"replicas": "2"}))
    assert rejected(merged(CONTROL_MINIMAL, {"bogus": True}))
    assert rejected(merged(CONTROL_MINIMAL, {"enabled": True}))
    assert rejected(merged(CONTROL_MINIMAL, {"database": {"password": "x"}}))
    assert rejected({"database": {"url": "mysql://u:p@db/permd"}})
    assert rejected(merged(CONTROL_MINIMAL, {"migrate": {"mode": "sometimes"}}))
    assert rejected(merged(CONTROL_MINIMAL, {"rateLimit": {"hour": -5}}))
    assert rejected(merged(CONTROL_MINIMAL, {"rateLimit": {"second": 5}}))
    assert rejected(merged(CONTROL_MINIMAL, {"retention": "forever"}))
    assert rejected(merged(CONTROL_MINIMAL, {"service": {"httpPort": 0}}))
    # No back door for the URL as a plain env value.
    assert rejected(merged(CONTROL_MINIMAL, {"env": [{"name": "PERMD_CONTROL_DATABASE", "value": DB_URL}]}))
    # A hook Job runs before the release's own Secret exists.
    assert rejected({"database": {"url": DB_URL}, "migrate": {"mode": "job"}})
    with pytest.raises(helm.HelmError, match="replicas"):
        ControlRender(merged(CONTROL_MINIMAL, {"replicas": -1}))


def test_control_needs_a_database() -> None:
    with pytest.raises(helm.HelmError, match="database.existingSecret"):
        ControlRender({})


CONTROL_VARIANTS = {
    "defaults": CONTROL_MINIMAL,
    "renamed-port-80": merged(CONTROL_MINIMAL, {"fullnameOverride": "authz-control", "service": {"httpPort": 80}}),
}


@pytest.mark.parametrize("control_values", CONTROL_VARIANTS.values(), ids=CONTROL_VARIANTS.keys())
def test_sidecars_follow_the_control_plane(control_values: dict[str, Any], app_chart: Path) -> None:
    """The charts/permd values NOTES.txt prints point every mode at the control Service."""
    r = ControlRender(control_values)
    svc = one(r.docs, "Service")
    http = {p["name"]: p for p in svc["spec"]["ports"]}["http"]
    assert ports_of(r.server())[http["targetPort"]] == CONTROL_HTTP
    source = f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{http['port']}"
    key_ref = {"name": "permd-control-key", "key": "api-key"}
    assert "permd control keys create --org" in r.notes
    assert "create secret generic permd-control-key --from-literal=api-key=" in r.notes

    sidecar_values = r.sidecar_values()
    assert sidecar_values["config"] == {"source": source, "source_protocol": "permd"}
    assert lint_errors(sidecar_values) == []

    # Shared mode: the ConfigMap's source, the key from the Secret.
    docs = render(merged(sidecar_values, {"mode": "deployment",
                                          "webhook": {"enabled": True, "tlsSecretName": "t"}}))
    validate_manifests(docs)
    assert yaml.safe_load(one(docs, "ConfigMap", f"{RELEASE}-permd-config")["data"]["permd.yaml"])["source"] == source
    c = container(one(docs, "Deployment", f"{RELEASE}-permd")["spec"]["template"]["spec"], "permd")
    assert env_of(c)["PERMD_API_KEY"] == {"secretKeyRef": key_ref}
    # Injected sidecars: the same, as environment.
    sidecar = json.loads(one(docs, "ConfigMap", f"{RELEASE}-permd-webhook-sidecar")["data"]["sidecar.json"])
    env = env_of(sidecar["containers"][0])
    assert env["PERMD_SOURCE"] == source and env["PERMD_SOURCE_PROTOCOL"] == "permd"
    assert env["PERMD_API_KEY"] == {"secretKeyRef": key_ref}

    # The permd.sidecar template in an application chart.
    app_docs = render({"permd": sidecar_values}, chart=app_chart)
    validate_manifests(app_docs)
    cfg = yaml.safe_load(one(app_docs, "ConfigMap")["data"]["permd.yaml"])
    assert cfg["source"] == source
    c = container(one(app_docs, "Deployment")["spec"]["template"]["spec"], "permd")
    assert env_of(c)["PERMD_API_KEY"] == {"secretKeyRef": key_ref}


@pytest.mark.parametrize("values_file", CI_VALUES, ids=[p.name for p in CI_VALUES])
def test_permd_chart_renders_no_control_plane(values_file: Path) -> None:
    """The control plane is its own chart: charts/permd never renders it, in any mode."""
    docs = render(load_values(values_file))
    assert not [c["name"] for c in containers_in(docs) if is_control_plane(c)]
    for c in containers_in(docs):
        assert not {CONTROL_HTTP, CONTROL_GRPC} & set(ports_of(c).values())
    for doc in docs:
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "control-plane"
        assert "PERMD_CONTROL_" not in json.dumps(doc)
    for svc in of_kind(docs, "Service"):
        assert not {CONTROL_HTTP, CONTROL_GRPC} & {p["port"] for p in svc["spec"]["ports"]}


def test_permd_chart_has_no_control_switch() -> None:
    # No half-way `control:` section in the sidecar chart: it is rejected, not ignored.
    assert lint_errors(merged(MINIMAL, {"control": {"enabled": True}}))
    assert lint_errors(merged(MINIMAL, {"control": {"enabled": False}}))


def test_control_and_shared_permd_do_not_select_each_other() -> None:
    control = ControlRender(CONTROL_MINIMAL)
    shared = render(merged(MINIMAL, {"mode": "deployment"}))
    ctl_dep = one(control.docs, "Deployment")
    permd_dep = one(shared, "Deployment")
    ctl_sel = ctl_dep["spec"]["selector"]["matchLabels"]
    permd_sel = permd_dep["spec"]["selector"]["matchLabels"]
    assert not ctl_sel.items() <= permd_dep["spec"]["template"]["metadata"]["labels"].items()
    assert not permd_sel.items() <= ctl_dep["spec"]["template"]["metadata"]["labels"].items()
    # Same image, same binary.
    assert control.server()["image"] == container(permd_dep["spec"]["template"]["spec"], "permd")["image"]


# ----------------------------------------------------------------------------- who may ask


def check_shared_auth(values: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """The shared workload mounts its keys (and TLS) and is guarded by a NetworkPolicy."""
    auth = merged({"keys": {"enabled": True, "existingSecret": "", "secretKey": "keys"},
                   "tls": {"enabled": False, "secretName": "", "certManager": {"enabled": False},
                           "clientCa": {"enabled": False, "secretName": "", "secretKey": "ca.crt"}}},
                  values.get("auth", {}))
    workload = one(docs, "Deployment" if values["mode"] == "deployment" else "DaemonSet", f"{RELEASE}-permd")
    spec = workload["spec"]["template"]["spec"]
    c = container(spec, "permd")
    env = env_of(c)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    keys_secret = auth["keys"]["existingSecret"] or f"{RELEASE}-permd-auth-keys"
    assert env["PERMD_AUTH_KEYS_FILE"] == f"/etc/permd-auth/{auth['keys']['secretKey']}"
    assert volumes["permd-auth-keys"]["secret"]["secretName"] == keys_secret
    assert mounts["permd-auth-keys"] == {"name": "permd-auth-keys", "mountPath": "/etc/permd-auth", "readOnly": True}
    generated = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == f"{RELEASE}-permd-auth-keys"]
    assert len(generated) == (0 if auth["keys"]["existingSecret"] else 1)
    for secret in generated:
        text = base64.b64decode(secret["data"][auth["keys"]["secretKey"]]).decode()
        (key,) = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert re.fullmatch(r"[A-Za-z0-9]{48}", key)
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        for doc in docs:
            if doc is not secret:
                assert key not in json.dumps(doc), f"generated key in clear in {doc['kind']}"
    assert "PERMD_INSECURE_LISTEN" not in env
    if auth["tls"]["enabled"]:
        tls_secret = auth["tls"]["secretName"] or f"{RELEASE}-permd-tls"
        assert env["PERMD_TLS_CERT"] == "/etc/permd-tls/tls.crt"
        assert env["PERMD_TLS_KEY"] == "/etc/permd-tls/tls.key"
        assert volumes["permd-tls"]["secret"]["secretName"] == tls_secret
        assert mounts["permd-tls"]["readOnly"] is True
        if auth["tls"]["clientCa"]["enabled"]:
            assert env["PERMD_TLS_CLIENT_CA"] == "/etc/permd-tls/ca.crt"
        else:
            assert "PERMD_TLS_CLIENT_CA" not in env
        if auth["tls"]["certManager"]["enabled"]:
            cert = one(docs, "Certificate", f"{RELEASE}-permd-tls")
            assert cert["spec"]["secretName"] == tls_secret
            assert cert["spec"]["dnsNames"] == [
                f"{RELEASE}-permd", f"{RELEASE}-permd.{NAMESPACE}", f"{RELEASE}-permd.{NAMESPACE}.svc",
                f"{RELEASE}-permd.{NAMESPACE}.svc.cluster.local",
            ]
            ref = auth["tls"]["certManager"]["issuerRef"]
            assert cert["spec"]["issuerRef"] == {"group": "cert-manager.io", **ref}
        else:
            assert not of_kind(docs, "Certificate")
    else:
        assert not {"PERMD_TLS_CERT", "PERMD_TLS_KEY", "PERMD_TLS_CLIENT_CA"} & set(env)

    np = one(docs, "NetworkPolicy", f"{RELEASE}-permd")
    assert np["spec"]["podSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]
    assert np["spec"]["policyTypes"] == ["Ingress"]
    clients, scrape = np["spec"]["ingress"]
    (peer,) = clients["from"]
    assert peer["podSelector"]["matchLabels"] == {"permd.io/client": "true"}
    ns_sel = values.get("networkPolicy", {}).get("clientNamespaceSelector")
    assert peer.get("namespaceSelector") == (ns_sel or None)
    assert [p["port"] for p in clients["ports"]] == ["permd-http", "permd-grpc"]
    assert [p["port"] for p in scrape["ports"]] == ["permd-admin"]
    assert scrape["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # The named ports exist on the container.
    assert set(ports_of(c)) == {"permd-http", "permd-grpc", "permd-admin"}


@pytest.mark.parametrize("mode", ["deployment", "daemonset"])
def test_shared_modes_get_a_generated_key_and_a_network_policy(mode: str) -> None:
    values = merged(MINIMAL, {"mode": mode})
    docs = render(values)
    validate_manifests(docs)
    check_shared_auth(values, docs)
    assert lint_errors(values) == []


def test_sidecar_mode_needs_no_key() -> None:
    for values in (load_values(CHART / "ci" / "sidecar-values.yaml"),
                   merged(MINIMAL, {"webhook": {"enabled": True, "tlsSecretName": "t"}})):
        docs = render(values)
        assert not of_kind(docs, "NetworkPolicy") and not of_kind(docs, "Certificate")
        assert not [d for d in of_kind(docs, "Secret") if "auth-keys" in d["metadata"]["name"]]
        text = json.dumps(docs)
        for name in ("PERMD_AUTH_KEYS_FILE", "PERMD_TLS_CERT", "PERMD_INSECURE_LISTEN", "permd-auth-keys"):
            assert name not in text


def test_daemonset_existing_secrets_and_listings_off() -> None:
    values = load_values(CHART / "ci" / "daemonset-values.yaml")
    docs = render(values)
    cfg = yaml.safe_load(one(docs, "ConfigMap")["data"]["permd.yaml"])
    assert cfg["queries"] is False and cfg["disabled_routes"] == ["/v1/enforce"]
    # The default (true, no routes) leaves an empty list out of the file.
    cfg = yaml.safe_load(one(render(merged(MINIMAL, {"mode": "deployment"})), "ConfigMap")["data"]["permd.yaml"])
    assert cfg["queries"] is True and "disabled_routes" not in cfg


def test_injected_sidecar_gets_list_settings_as_comma_separated_env() -> None:
    values = merged(MINIMAL, {"webhook": {"enabled": True, "tlsSecretName": "t"},
                              "config": {"disabled_routes": ["/authorized_users", "/v1/orgs"]}})
    docs = render(values)
    sidecar = json.loads(one(docs, "ConfigMap", f"{RELEASE}-permd-webhook-sidecar")["data"]["sidecar.json"])
    env = env_of(sidecar["containers"][0])
    assert env["PERMD_DISABLED_ROUTES"] == "/authorized_users,/v1/orgs"
    assert env["PERMD_QUERIES"] == "true"


def test_shared_mode_refuses_to_render_without_auth() -> None:
    shared = merged(MINIMAL, {"mode": "deployment"})
    with pytest.raises(helm.HelmError, match="auth.insecureListen"):
        render(merged(shared, {"auth": {"keys": {"enabled": False}}}))
    # mTLS alone is enough.
    docs = render(merged(shared, {"auth": {"keys": {"enabled": False}, "tls": {
        "enabled": True, "secretName": "tls", "clientCa": {"enabled": True, "secretName": "cas"}}}}))
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    env = env_of(container(spec, "permd"))
    assert env["PERMD_TLS_CLIENT_CA"] == "/etc/permd-client-ca/ca.crt"
    assert "PERMD_AUTH_KEYS_FILE" not in env
    assert {v["name"]: v for v in spec["volumes"]}["permd-client-ca"]["secret"]["secretName"] == "cas"
    # Said in so many words.
    docs = render(merged(shared, {"auth": {"keys": {"enabled": False}, "insecureListen": True}}))
    env = env_of(container(one(docs, "Deployment")["spec"]["template"]["spec"], "permd"))
    assert env["PERMD_INSECURE_LISTEN"] == "true"
    with pytest.raises(helm.HelmError, match="clientCa.enabled needs auth.tls.enabled"):
        render(merged(shared, {"auth": {"tls": {"clientCa": {"enabled": True}}}}))
    with pytest.raises(helm.HelmError, match="secretName"):
        render(merged(shared, {"auth": {"tls": {"enabled": True}}}))
    with pytest.raises(helm.HelmError, match="issuerRef.name"):
        render(merged(shared, {"auth": {"tls": {"enabled": True, "certManager": {"enabled": True}}}}))
    assert lint_errors(merged(shared, {"auth": {"keys": {"bogus": 1}}}))
    assert lint_errors(merged(shared, {"networkPolicy": {"clientLabels": {"permd.io/client": 1}}}))
