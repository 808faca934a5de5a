"""Create / update the virtual environment of the *peer* libraries: ``bench/.venvs/peers``.

The benchmark suite compares our engines with libraries a user could pick instead. Two
of them cannot live in ``.venv``: lleaves 1.3.0 calls ``llvmlite.binding.initialize()``,
which llvmlite 0.45+ turned into an error, while our numba needs llvmlite 0.50. So the
peers get their own venv, made with the same Python version as ``.venv``:

=========  ==============================================  ============================
peer       pins                                            why
=========  ==============================================  ============================
(base)     numpy==2.4.6                                    same numpy as ``.venv``
lleaves    lleaves==1.3.0, llvmlite>=0.44,<0.45            newest llvmlite lleaves runs on
tl2cgen    tl2cgen==1.0.0, treelite==4.1.2                 tl2cgen 1.0.0 embeds Treelite
                                                           4.1.2; a newer treelite makes it
                                                           warn on every model it reads
=========  ==============================================  ============================

Never raises on an install failure: each peer's result (installed versions, or the
last lines of pip's error) goes to ``bench/.venvs/peers/status.json`` and the script
exits 0, so the suite can report "not installed: <reason>". Idempotent: a marker
(``installed.json``) records the spec that was installed; a later call with the same
spec only reads ``status.json`` (milliseconds). ``--force`` rebuilds, e.g. to retry a
failed install.

Stdlib only. Run::

    .venv/bin/python bench/peers_env.py [--force] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: venv location, relative to the repository root (git-ignored).
VENV_REL = Path("bench") / ".venvs" / "peers"

#: Installed first, on its own: every peer needs it.
BASE_PINS: tuple[str, ...] = ("numpy==2.4.6",)

#: peer -> (pip requirements, modules that must import, distributions to report).
PEERS: dict[str, dict[str, tuple[str, ...]]] = {
    "lleaves": {
        "pins": ("lleaves==1.3.0", "llvmlite>=0.44,<0.45"),
        "modules": ("lleaves", "llvmlite.binding"),
        "dists": ("lleaves", "llvmlite", "numpy"),
    },
    "tl2cgen": {
        "pins": ("tl2cgen==1.0.0", "treelite==4.1.2"),
        "modules": ("tl2cgen", "treelite"),
        "dists": ("tl2cgen", "treelite", "numpy", "scipy"),
    },
}

#: Bump to force a rebuild of every existing env after changing how it is built.
LAYOUT_VERSION = 1

PIP_TIMEOUT_S = 900
ERROR_LINES = 6

_PIP_NOISE = re.compile(r"^WARNING: Location '.*' is ignored")


def venv_dir(root: Path) -> Path:
    return Path(root) / VENV_REL


def venv_python(root: Path) -> Path:
    return venv_dir(root) / "bin" / "python"


def _spec(py_version: str) -> dict[str, Any]:
    return {
        "layout": LAYOUT_VERSION,
        "python": py_version,
        "base": list(BASE_PINS),
        "peers": {name: list(p["pins"]) for name, p in PEERS.items()},
    }


def _spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _main_venv_version(root: Path) -> str | None:
    """``major.minor`` of ``.venv``'s Python, from its ``pyvenv.cfg`` (no subprocess)."""
    cfg = Path(root) / ".venv" / "pyvenv.cfg"
    with contextlib.suppress(OSError):
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                parts = value.strip().split(".")
                if len(parts) >= 2:
                    return f"{parts[0]}.{parts[1]}"
    return None


def _base_python(root: Path) -> tuple[str, str, str]:
    """(interpreter to run ``-m venv`` with, its major.minor, a note)."""
    want = _main_venv_version(root)
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if want is None or want == here:
        return sys.executable, here, ""
    found = shutil.which(f"python{want}")
    if found:
        return found, want, ""
    return sys.executable, here, f"python{want} (as in .venv) not found; used python{here}"


def _tail(text: str, n: int = ERROR_LINES) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not _PIP_NOISE.match(ln)]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    keep = errors[-n:] if errors else lines[-n:]
    return " | ".join(ln.strip() for ln in keep) or "(no output)"


def _run(cmd: list[str], timeout: float) -> tuple[bool, str]:
    """Run ``cmd``; (succeeded, combined output). Never raises."""
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.output if isinstance(exc.output, str) else ""
        return False, f"{out}\ntimed out after {timeout:.0f} s: {' '.join(cmd[:4])} ..."
    except OSError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return proc.returncode == 0, proc.stdout or ""


def _pip_install(py: Path, reqs: tuple[str, ...] | list[str]) -> tuple[bool, str]:
    return _run([str(py), "-m", "pip", "install", "--no-input", *reqs], PIP_TIMEOUT_S)


_PROBE = r"""
import importlib, importlib.metadata as md, json, sys
mods, dists = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"versions": {}, "error": None}
for d in dists:
    try:
        out["versions"][d] = md.version(d)
    except md.PackageNotFoundError:
        out["versions"][d] = None
for m in mods:
    try:
        importlib.import_module(m)
    except BaseException as exc:
        out["error"] = f"{m} not importable: {type(exc).__name__}: {exc}"
        break
print(json.dumps(out))
"""


def _probe(py: Path, modules: tuple[str, ...], dists: tuple[str, ...]) -> dict[str, Any]:
    ok, out = _run([str(py), "-c", _PROBE, json.dumps(list(modules)), json.dumps(list(dists))], 120)
    if ok:
        with contextlib.suppress(ValueError, IndexError):
            return json.loads(out.strip().splitlines()[-1])
    return {"versions": {}, "error": f"import check failed: {_tail(out)}"}


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialise concurrent builders (two suite processes starting at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        yield


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_current(root: Path, spec_hash: str) -> dict[str, Any] | None:
    """The recorded status when the marker matches ``spec_hash`` and the venv exists."""
    vdir = venv_dir(root)
    try:
        marker = json.loads((vdir / "installed.json").read_text())
        status = json.loads((vdir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    if marker.get("spec_hash") != spec_hash or not venv_python(root).exists():
        return None
    return status


def _build(root: Path, spec: dict[str, Any], spec_hash: str, base_py: str, note: str) -> dict:
    vdir = venv_dir(root)
    py = venv_python(root)
    t0 = time.perf_counter()
    status: dict[str, Any] = {
        "python": str(py),
        "python_version": spec["python"],
        "venv": str(vdir),
        "spec_hash": spec_hash,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": note,
        "peers": {},
    }

    def fail_all(reason: str) -> dict[str, Any]:
        for name in PEERS:
            status["peers"][name] = {"version": None, "versions": {}, "error": reason}
        return status

    # (Re)create the venv: --clear wipes a half-built or foreign one.
    ok, out = _run([base_py, "-m", "venv", "--clear", str(vdir)], 300)
    if not ok or not py.exists():
        return fail_all(f"venv creation failed: {_tail(out)}")

    ok, out = _pip_install(py, BASE_PINS)
    base_error = None if ok else f"pip install {' '.join(BASE_PINS)} failed: {_tail(out)}"

    for name, peer in PEERS.items():
        entry: dict[str, Any] = {"version": None, "versions": {}, "error": None}
        if base_error:
            entry["error"] = base_error
        else:
            ok, out = _pip_install(py, [*BASE_PINS, *peer["pins"]])
            if not ok:
                entry["error"] = f"pip install {' '.join(peer['pins'])} failed: {_tail(out)}"
            else:
                probe = _probe(py, peer["modules"], peer["dists"])
                entry["versions"] = probe.get("versions", {})
                entry["error"] = probe.get("error")
                if not entry["error"]:
                    entry["version"] = entry["versions"].get(name)
        status["peers"][name] = entry

    status["build_s"] = round(time.perf_counter() - t0, 1)
    return status


def ensure_peers_env(root: Path, *, force: bool = False) -> dict[str, Any]:
    """Make sure ``bench/.venvs/peers`` exists with the pinned peers; return its status.

    Returns ``{"python": "<venv>/bin/python", "python_version": "3.11", "peers":
    {"lleaves": {"version": "1.3.0" | None, "versions": {dist: version}, "error": str |
    None}, "tl2cgen": {...}}, ...}``. A peer with ``error`` set is not usable (the error
    is one line, fit for a report). Never raises for install problems.
    """
    root = Path(root).resolve()
    base_py, py_version, note = _base_python(root)
    spec = _spec(py_version)
    spec_hash = _spec_hash(spec)
    if not force:
        current = _read_current(root, spec_hash)
        if current is not None:
            return current
    vdir = venv_dir(root)
    with _lock(vdir.parent / ".peers.lock"):
        if not force:  # another process may have finished while we waited
            current = _read_current(root, spec_hash)
            if current is not None:
                return current
        try:
            status = _build(root, spec, spec_hash, base_py, note)
        except Exception as exc:  # never raise: report instead
            status = {
                "python": str(venv_python(root)),
                "python_version": py_version,
                "peers": {
                    n: {"version": None, "versions": {}, "error": f"{type(exc).__name__}: {exc}"}
                    for n in PEERS
                },
            }
        with contextlib.suppress(OSError):
            vdir.mkdir(parents=True, exist_ok=True)
            _write_json(vdir / "status.json", status)
            # The marker records what was attempted (failures included): no retry loop
            # on every call; --force retries.
            _write_json(vdir / "installed.json", {"spec_hash": spec_hash, "spec": spec})
    return status


def peer_error(status: dict[str, Any], name: str) -> str | None:
    """None when ``name`` is installed and importable, else a one-line reason."""
    entry = status.get("peers", {}).get(name)
    if entry is None:
        return f"{name} is not a known peer"
    if entry.get("error"):
        return f"not installed: {entry['error']}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--json", action="store_true", help="print the status as JSON")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    status = ensure_peers_env(args.root, force=args.force)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"peers env: {status.get('python')} ({time.perf_counter() - t0:.2f} s)")
    for name, entry in status.get("peers", {}).items():
        if entry.get("error"):
            print(f"  {name}: NOT INSTALLED: {entry['error']}")
        else:
            vers = ", ".join(f"{k} {v}" for k, v in entry.get("versions", {}).items())
            print(f"  {name}: ok ({vers})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
