"""The retraining run log: one JSON object per line, appended by every ``retrain`` run.

The log lives at ``RUN_LOG`` (default ``runs.jsonl`` in the registry folder), so it
travels with the models it talks about. Every run is recorded, whatever its outcome
(:data:`OUTCOMES`); a line is written whole under an ``flock`` of the file and
``fsync``-ed, so concurrent readers (the server's monitor, ``runs list``) see whole
lines only. A line that does not parse (a disk filled mid-write) is skipped by readers
and named by ``runs list``.

``intellilog runs list [--json]`` and ``intellilog runs show RUN_ID [--json]`` read it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kernels.errors import ConfigError
from training.registry_remote import default_cache, is_url

__all__ = [
    "OUTCOMES",
    "SUCCESS",
    "RunLog",
    "add_runs_parser",
    "run_log_path",
]

#: Every outcome a run can have. ``archived`` and ``candidate`` trained a model (success).
OUTCOMES = ("skipped", "refused", "archived", "candidate", "failed")
SUCCESS = ("archived", "candidate")


def run_log_path(run_log: str, registry_root: str | Path) -> Path:
    """``RUN_LOG``, or ``runs.jsonl`` in the registry folder when it is empty.

    A registry in a bucket (``s3://...``) has no folder of its own: its runs go to
    ``runs.jsonl`` in its local cache (:attr:`training.registry.Registry.root`), so
    ``retrain``, ``runs list`` and the server's monitor agree on one file."""
    if run_log:
        return Path(run_log)
    if is_url(registry_root):
        return default_cache(str(registry_root).rstrip("/")) / "runs.jsonl"
    return Path(registry_root) / "runs.jsonl"


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (seconds), for records people read."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class RunLog:
    """The run log file and its lock (``<file>.lock``, held by a running ``retrain``)."""

    path: Path

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one line (flock, write, fsync)."""
        line = json.dumps(record, sort_keys=False, separators=(",", ":"), allow_nan=False)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    f.write(line + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        except OSError as exc:
            raise ConfigError(f"RUN_LOG={str(self.path)!r}: cannot append: {exc}") from None

    def read(self) -> tuple[list[dict[str, Any]], list[int]]:
        """Every record, oldest first, and the line numbers that did not parse."""
        if not self.path.is_file():
            return [], []
        out: list[dict[str, Any]] = []
        bad: list[int] = []
        with self.path.open("r", encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    bad.append(n)
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("run_id"), str):
                    out.append(rec)
                else:
                    bad.append(n)
        return out, bad

    def records(self) -> list[dict[str, Any]]:
        return self.read()[0]

    def find(self, run_id: str) -> dict[str, Any]:
        records = self.records()
        for rec in records:
            if rec["run_id"] == run_id:
                return rec
        known = ", ".join(r["run_id"] for r in records[-5:]) or "none"
        raise ConfigError(f"no run {run_id!r} in {self.path} (latest: {known})")

    def last_trained(self, tenant: str) -> dict[str, Any] | None:
        """The latest run of ``tenant`` that trained a model (outcome archived or candidate)."""
        for rec in reversed(self.records()):
            if rec.get("outcome") in SUCCESS and rec.get("params", {}).get("tenant") == tenant:
                return rec
        return None

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held for a whole ``retrain`` run: a second run at the same time is refused."""
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            f = lock.open("a+")
        except OSError as exc:
            raise ConfigError(f"RUN_LOG={str(self.path)!r}: cannot create {lock}: {exc}") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"another `intellilog retrain` holds {lock}: wait for it to finish"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


# ---- the commands ----------------------------------------------------------------------------


def _log(args: argparse.Namespace) -> RunLog:
    from server.config import load_settings

    s = load_settings()
    return RunLog(run_log_path(s.run_log, args.registry or s.model_artifact_path))


def _mae(rec: dict[str, Any], who: str) -> str:
    v = rec.get("metrics", {}).get(who, {}).get("mae")
    return f"{v:7.2f}" if isinstance(v, int | float) else f"{'-':>7}"


def cmd_runs(args: argparse.Namespace) -> int:
    log = _log(args)
    if args.runs_command == "show":
        rec = log.find(args.run_id)
        if args.json:
            print(json.dumps(rec, indent=2))
            return 0
        print(format_run(rec))
        return 0
    records, bad = log.read()
    for n in bad:
        print(f"warning: {log.path}:{n} is not a run record; skipped", file=sys.stderr)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    if not records:
        print(f"no runs in {log.path}: run `intellilog retrain`")
        return 0
    print(f"{'run':28} {'started':20} {'outcome':9} {'rows':>7} {'new':>7} {'prod':>7} versions")
    for r in records:
        v = r.get("versions", {})
        rows = r.get("data", {}).get("rows", {}).get("used")
        print(
            f"{r['run_id']:28} {str(r.get('started', ''))[:19]:20} {r.get('outcome', '?'):9} "
            f"{rows if rows is not None else '-':>7} {_mae(r, 'new')} {_mae(r, 'production')} "
            f"{v.get('new') or '-'} vs {v.get('production') or '-'}"
        )
    return 0


def format_run(rec: dict[str, Any]) -> str:
    """One run for people: outcome, reason, window, data, metrics, versions."""
    data = rec.get("data", {})
    window = data.get("window", {})
    lines = [
        f"run {rec['run_id']}: {rec.get('outcome')} ({rec.get('started')} .. {rec.get('ended')})",
        f"reason: {rec.get('reason')}",
        f"window: {window.get('since')} .. {window.get('until')}",
        f"rows: {json.dumps(data.get('rows', {}))}",
        f"data sha256: {data.get('sha256') or '-'}",
    ]
    q = rec.get("quality")
    if q:
        lines.append(f"quality: {q.get('score')} (threshold {q.get('threshold')})")
    d = rec.get("drift")
    if d:
        lines.append(f"drift: {d.get('verdict')} (score {d.get('score')}, {d.get('drifted')})")
    for who in ("new", "production"):
        m = rec.get("metrics", {}).get(who)
        if m:
            lines.append(
                f"{who}: MAE {m.get('mae'):.3f}, RMSE {m.get('rmse'):.3f}, "
                f"accuracy {m.get('accuracy', 0) * 100:.1f}% on {m.get('rows')} holdout rows"
            )
    lines.append(f"versions: {json.dumps(rec.get('versions', {}))}")
    if rec.get("experiment"):
        lines.append(f"experiment: {rec['experiment']}")
    if rec.get("mlflow"):
        lines.append(f"mlflow: {json.dumps(rec['mlflow'])}")
    return "\n".join(lines)


def add_runs_parser(sub: Any) -> None:
    """``intellilog runs list|show``."""
    r = sub.add_parser("runs", help="the retraining run log: list runs, show one")
    rs = r.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    lst = rs.add_parser("list", help="every recorded run, oldest first")
    lst.add_argument("--json", action="store_true", help="print the records as JSON")
    show = rs.add_parser("show", help="one run: data, quality, drift, metrics, decision")
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    for sp in (lst, show):
        sp.add_argument(
            "--registry",
            help="registry folder whose runs.jsonl to read when RUN_LOG is unset "
            "(default: $MODEL_ARTIFACT_PATH or ./models)",
        )
        sp.set_defaults(fn=cmd_runs)
