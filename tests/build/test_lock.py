"""The lock files cover what pyproject.toml asks for (a dependency added to pyproject.toml
without `make lock` would install unpinned, or not at all, from requirements/dev.lock)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def _locked(path: Path) -> dict[str, list[str]]:
    pins: dict[str, list[str]] = {}
    for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.M):
        pins.setdefault(m.group(1).lower().replace("_", "-"), []).append(m.group(2))
    return pins


def test_every_requirement_is_pinned_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {"base": project["dependencies"], "dev": project["dependencies"] + extras["dev"]}
    for extra, reqs in extras.items():
        if extra != "dev":
            wanted[extra] = project["dependencies"] + reqs
    for lock, reqs in wanted.items():
        path = ROOT / "requirements" / f"{lock}.lock"
        assert path.is_file(), f"{path} missing: run `make lock`"
        pins = _locked(path)
        missing = sorted({_name(r) for r in reqs} - set(pins))
        assert not missing, f"{path.name} lacks {missing}: run `make lock`"
        text = path.read_text()
        assert text.count("==") <= text.count("--hash=sha256:"), (
            f"{path.name}: a pin without a hash"
        )


def test_both_readme_commands_install_from_the_lock() -> None:
    make = (ROOT / "Makefile").read_text()
    deps = dict(re.findall(r"^([a-z]+): *(.*)$", make, re.M))

    def needs_venv(target: str) -> bool:
        return "venv" in deps[target].split() or any(
            needs_venv(d) for d in deps[target].split() if d in deps
        )

    assert needs_venv("demo") and needs_venv("test")
    assert "--require-hashes -r requirements/dev.lock" in make
    assert "--no-deps -e ." in make
    assert "make test" in (ROOT / ".ci" / "run").read_text()
