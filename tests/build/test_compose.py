"""build/compose.yaml: valid against the Compose Specification, every file it builds
from or mounts exists, and its services are wired to each other as the stack needs.

The schema is the Compose Specification's JSON schema (compose-spec/compose-spec,
schema/compose-spec.json, Apache License 2.0) as vendored by the check-jsonschema
package (``check_jsonschema/builtin_schemas/vendor/compose-spec.json``, its licence
beside it in ``vendor/licenses/LICENSE.compose-spec``): installed with the ``dev``
extra, nothing is downloaded at run time.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.build.buildkit import BUILD, DOCKER, known_settings, require_tool, skip_or_fail

COMPOSE = BUILD / "compose.yaml"
MONITORING = BUILD / "monitoring"

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Doc:
    doc: Doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return doc


def _schema_errors(doc: Doc) -> list[str]:
    try:
        from importlib.resources import files

        from jsonschema import Draft202012Validator

        vendor = files("check_jsonschema.builtin_schemas.vendor")
    except ImportError:
        skip_or_fail("check-jsonschema not installed: pip install -e '.[dev]'")
        raise AssertionError("unreachable") from None
    schema = json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    v = Draft202012Validator(schema)
    return [f"{e.json_path}: {e.message}" for e in v.iter_errors(doc)]


def test_valid_against_the_compose_specification(compose: Doc) -> None:
    assert _schema_errors(compose) == []


def test_schema_catches_mistakes(compose: Doc) -> None:
    """The validation above is real: a wrong condition and an unknown key are refused."""
    bad = copy.deepcopy(compose)
    bad["services"]["intellilog"]["depends_on"]["train"]["condition"] = "service_done"
    assert len(_schema_errors(bad)) >= 1
    bad = copy.deepcopy(compose)
    bad["services"]["postgres"]["healthcheck"]["tests"] = ["CMD", "true"]
    assert len(_schema_errors(bad)) >= 1


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the defaults (the environment is not read)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _bind_mounts(service: Doc) -> list[tuple[str, str]]:
    return [
        (src, dst.split(":")[0])
        for src, _, dst in (v.partition(":") for v in service.get("volumes", []))
        if src.startswith((".", "/"))
    ]


def test_every_file_built_from_or_mounted_exists(compose: Doc) -> None:
    named = set(compose["volumes"])
    for name, svc in compose["services"].items():
        if "build" in svc:
            context = (BUILD / svc["build"]["context"]).resolve()
            assert context.is_dir(), name
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        else:
            image = svc["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
        for src, _ in _bind_mounts(svc):
            assert (BUILD / src).exists(), f"{name}: {src} does not exist"
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in named, f"{name}: volume {src} not declared"


def test_start_order_and_shared_registry(compose: Doc) -> None:
    s = compose["services"]
    server, train, pg = s["intellilog"], s["train"], s["postgres"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert server["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    # the job trains into the volume the server reads, built from the same image
    assert train["build"] == server["build"] and train["image"] == server["image"]
    reg = server["environment"]["MODEL_ARTIFACT_PATH"]
    assert train["environment"]["MODEL_ARTIFACT_PATH"] == reg
    assert (
        {v for v in train["volumes"] if v.endswith(f":{reg}")}
        == {v for v in server["volumes"] if v.endswith(f":{reg}")}
        != set()
    )
    # the job's command is a script the image really holds at that path
    (script,) = train["command"]
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    copied = re.search(r"^COPY (build/docker/\S+ )+(/opt/intellilog/)$", dockerfile, re.M)
    assert copied is not None
    assert f"build/docker/{Path(script).name}" in copied[0] and script.startswith(copied[2])
    assert (DOCKER / Path(script).name).is_file()
    url = urlsplit(_interpolate(server["environment"]["DATABASE_URL"]))
    assert url.hostname in s and url.port == 5432
    assert url.username == pg["environment"]["POSTGRES_USER"]
    assert url.path == "/" + pg["environment"]["POSTGRES_DB"]


def test_server_settings_are_known_and_valid(compose: Doc) -> None:
    from server.config import load_settings

    for name in ("intellilog", "train"):
        env = {k: _interpolate(str(v)) for k, v in compose["services"][name]["environment"].items()}
        assert set(env) <= known_settings(), name
        load_settings(env, dotenv=None)  # raises ConfigError naming a bad value


def test_prometheus_scrapes_the_server_service(compose: Doc) -> None:
    prom = compose["services"]["prometheus"]
    ((folder, target),) = _bind_mounts(prom)
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = config_arg.split("=", 1)[1]
    assert config_path.startswith(target + "/")
    config = BUILD / folder / config_path.removeprefix(target + "/")
    ours = yaml.safe_load(config.read_text(encoding="utf-8"))
    (job,) = ours["scrape_configs"]
    ((host_port,),) = (sc["targets"] for sc in job["static_configs"])
    host, port = host_port.split(":")
    server = compose["services"]["intellilog"]
    assert host in compose["services"] and host == "intellilog"
    assert port == server["environment"]["INTELLILOG_PORT"]
    assert f"{port}:{port}" in server["ports"]
    for rule_file in ours["rule_files"]:
        assert (config.parent / rule_file).is_file()
    # the same as the file the monitoring tests check, but for the target
    original = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    original["scrape_configs"][0]["static_configs"][0]["targets"] = [host_port]
    assert ours == original


def test_promtool_accepts_the_compose_config() -> None:
    promtool = require_tool(
        "promtool", "apt-get install -y --no-install-recommends prometheus (Debian)"
    )
    out = subprocess.run(
        [promtool, "check", "config", str(MONITORING / "prometheus" / "prometheus.compose.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_is_provisioned(compose: Doc) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(_bind_mounts(grafana))
    by_target = {dst: src for src, dst in mounts.items()}
    ds_src = next(s for d, s in by_target.items() if "/provisioning/datasources/" in d)
    dash_src = next(s for d, s in by_target.items() if "/provisioning/dashboards/" in d)
    ds = yaml.safe_load((BUILD / ds_src).read_text(encoding="utf-8"))
    (source,) = ds["datasources"]
    url = urlsplit(source["url"])
    prom = compose["services"]["prometheus"]
    assert url.hostname == "prometheus" and url.hostname in compose["services"]
    assert f"--web.listen-address=:{url.port}" in prom["command"]
    original = yaml.safe_load((MONITORING / "grafana" / "datasource.yml").read_text())
    original["datasources"][0]["url"] = source["url"]
    assert ds == original
    # the dashboard file is mounted into the folder the dashboard provider reads
    (provider,) = yaml.safe_load((BUILD / dash_src).read_text(encoding="utf-8"))["providers"]
    dashboard = next(d for d, s in by_target.items() if s.endswith("dashboard.json"))
    assert Path(dashboard).parent == Path(provider["options"]["path"])
    assert (BUILD / by_target[dashboard]).resolve() == MONITORING / "grafana" / "dashboard.json"
