"""Drift of the served model's inputs: logged feature rows against the training reference.

The statistics and the decision rule live in :mod:`training.drift` (:func:`drift_rule`:
no verdict under ``MIN_ROWS`` rows; a feature is flagged when its PSI exceeds
``max(floor, chi2.isf(alpha / k, df) / n_eff)``; the model score is the largest flagged
PSI, 0 when none). This module reads the prediction log, keeps the window, and publishes.

**What ``intellilog_model_drift_score{version} > 0.3`` means.** Over the monitor's window
(24 h unless told otherwise), at least ``MIN_ROWS`` (500) rows of that version were
logged, and some compared input feature has a PSI against the version's training
reference above 0.3 (past the 0.2 "significant" convention) while passing its critical
value (family-wise false-alarm rate 5 %, Bonferroni over the compared features; at 500
rows or more and up to ~100 bins every PSI above 0.3 passes it).
``intellilog_drift_score{feature}`` is that feature's PSI when flagged, else 0, so the
model score is the largest feature score.

**Calendar features.** Hour, day of week, weekend and day of year say *when* the window
is, not what the traffic is: they are compared only when the rows span whole cycles
(:func:`training.drift.calendar_skips`; the hour needs 24 h, the day of week 7 d). Other
features that follow a calendar or the weather (e.g. ``weather`` itself: a dry day has no
rain at all, a summer month no snow) can be declared with ``cycles`` (name -> seconds);
on generated deliveries a 24 h window flags ``weather`` on nearly every day otherwise
(see the issue 9 report / bench/drift_speed.py).

**Two ways to read a window.**

* :func:`drift_snapshot` (the CLI, ad hoc routes): one read of the rows logged since
  ``now − window`` (:meth:`Store.recent_features`: the newest ``limit`` rows). When the
  read hits ``limit`` the rows cover an unknown, shorter span: the snapshot says
  ``truncated`` and leaves every calendar feature out.
* :class:`DriftMonitor` (the server): reads only the rows logged since its previous tick
  and keeps bin counts per tick, so a 24 h window at any traffic is the whole 24 h (as
  long as one tick's rows fit in ``limit``). At start (or when a new version serves) it
  rebuilds the window from the store in pieces, newest first, as far back as reads stay
  under ``limit``. Rows committed to the store after the tick that should have read them
  (the prediction log's batching, about a second) are not counted: a small, unbiased loss.

**The prediction (ETA) distribution.** Manifests do not hold a histogram of training-time
predictions (the train job would have to add one; training/drift.py cannot). When a
manifest has ``"prediction_reference"`` (a :func:`reference_histograms` entry of the
training ETAs) it is used; otherwise the monitor compares the window's logged ETAs with
those of its *first full window* for that version (kept in memory: a restart starts a new
reference), as a two-sample comparison (``n_eff = n m / (n + m)``). The ETA check is
reported on its own and is not part of the model score.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from prometheus_client import Gauge

from kernels.errors import ConfigError, DataError, ModelLoadError, StoreError
from server import metrics
from server.monitoring.timer import refresh_every
from server.monitoring.windows import parse_cycles
from server.store import FeatureSample, Store
from training.drift import (
    ALPHA,
    MIN_ROWS,
    PSI_FLOOR,
    bin_counts,
    calendar_skips,
    drift_rule_counts,
)

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_WINDOW_S",
    "DRIFT_SCORE",
    "MODEL_DRIFT_SCORE",
    "DriftMonitor",
    "DriftSnapshot",
    "FeatureDrift",
    "PredictionDrift",
    "drift_route_payload",
    "drift_snapshot",
    "format_snapshot",
    "parse_cycles",
    "promoted_at",
]

log = logging.getLogger("intellilog.monitoring")

#: The monitor's window unless told otherwise.
DEFAULT_WINDOW_S = 86_400.0
#: Rows one store read may return (the newest ones).
DEFAULT_LIMIT = 50_000

# "mostrecent", as the quality gauges: with several workers (PROMETHEUS_MULTIPROC_DIR) each
# runs a monitor over the same database and the exposition shows the latest refresh.
DRIFT_SCORE = Gauge(
    "intellilog_drift_score",
    "PSI of an input feature against the served model's training reference when the drift "
    "rule flags it, else 0",
    ["feature"],
    multiprocess_mode="mostrecent",
)
MODEL_DRIFT_SCORE = Gauge(
    "intellilog_model_drift_score",
    "largest flagged input-feature PSI of a model version over the drift window (0: none)",
    ["version"],
    multiprocess_mode="mostrecent",
)

#: Log-spaced ETA grid (minutes): logged ETAs are counted on it so that any window's
#: distribution can be cut into the bins of a reference built later.
_ETA_GRID = np.geomspace(0.5, 8_000.0, 401)
_ETA = "eta"


# ---- the snapshot ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One input feature over the window: PSI, the critical value it must exceed (None:
    skipped, or too few rows), flagged, and why it was left out (None: compared)."""

    name: str
    kind: str
    psi: float
    critical: float | None
    flagged: bool
    skipped: str | None

    @property
    def score(self) -> float:
        """The gauge value: the PSI when flagged, else 0."""
        return self.psi if self.flagged else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "psi": self.psi,
            "critical": self.critical,
            "flagged": self.flagged,
            "score": self.score,
            "skipped": self.skipped,
        }


@dataclass(frozen=True, slots=True)
class PredictionDrift:
    """The served ETAs over the window against a reference ETA distribution."""

    reference: str  # "manifest" (training predictions) or "first window" (logged)
    reference_rows: int
    rows: int
    psi: float
    critical: float | None
    flagged: bool
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "reference_rows": self.reference_rows,
            "rows": self.rows,
            "psi": self.psi,
            "critical": self.critical,
            "flagged": self.flagged,
            "verdict": self.verdict,
        }


@dataclass(frozen=True, slots=True)
class DriftSnapshot:
    """The drift rule on one window of one model version's logged rows.

    ``verdict``: ``"insufficient data"`` (fewer than ``min_rows`` rows: no alarm),
    ``"ok"`` or ``"drift"``. ``score``: the largest flagged PSI (0 when none).
    ``covered_s``: the time span the rows cover (None: unknown, a read hit its limit).
    ``notes``: what the reader should know (truncation, the ETA reference, ...).
    """

    version: str
    tenant: str
    window_s: float
    taken_at: float
    rows: int
    covered_s: float | None
    truncated: bool
    verdict: str
    score: float
    drifted: tuple[str, ...]
    features: tuple[FeatureDrift, ...]
    prediction: PredictionDrift | None
    alpha: float
    floor: float
    min_rows: int
    notes: tuple[str, ...] = ()

    def feature(self, name: str) -> FeatureDrift:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (finite numbers; None where there is no value)."""
        return {
            "version": self.version,
            "tenant": self.tenant,
            "window_s": self.window_s,
            "taken_at": self.taken_at,
            "rows": self.rows,
            "covered_s": self.covered_s,
            "truncated": self.truncated,
            "verdict": self.verdict,
            "score": self.score,
            "drifted": list(self.drifted),
            "features": [f.to_dict() for f in self.features],
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "rule": {
                "alpha": self.alpha,
                "floor": self.floor,
                "min_rows": self.min_rows,
                "flag": "psi > max(floor, chi2.isf(alpha / tests, df) / n_eff)",
                "score": "largest psi among flagged features (0 when none)",
            },
            "notes": list(self.notes),
        }


def drift_route_payload(snapshot: DriftSnapshot | None) -> dict[str, Any]:
    """The body of ``GET /v1/monitoring/drift``: the latest snapshot, or why there is none."""
    if snapshot is None:
        return {
            "verdict": "no data",
            "detail": "no drift snapshot yet: no model is served, or the monitor has not run",
        }
    return snapshot.to_dict()


def format_snapshot(snap: DriftSnapshot) -> str:
    """A per-feature table and the verdict, for ``intellilog drift``."""
    covered = "unknown (read hit its row limit)" if snap.covered_s is None else _dur(snap.covered_s)
    lines = [
        f"model {snap.version}, tenant {snap.tenant}: {snap.rows} rows in the last "
        f"{_dur(snap.window_s)} (covering {covered})",
        f"{'feature':16} {'kind':11} {'PSI':>8} {'critical':>9}  flag",
    ]
    order = sorted(snap.features, key=lambda f: (f.skipped is not None, -f.psi))
    for f in order:
        crit = "-" if f.critical is None else f"{f.critical:.3f}"
        flag = "DRIFT" if f.flagged else ("skipped: " + f.skipped if f.skipped else "ok")
        if f.critical is None and f.skipped is None:
            flag = "-"
        lines.append(f"{f.name:16} {f.kind:11} {f.psi:8.3f} {crit:>9}  {flag}")
    p = snap.prediction
    if p is not None:
        crit = "-" if p.critical is None else f"{p.critical:.3f}"
        flag = "DRIFT" if p.flagged else p.verdict
        lines.append(f"{'eta (served)':16} {'prediction':11} {p.psi:8.3f} {crit:>9}  {flag}")
    lines.append(
        f"verdict: {snap.verdict.upper()}"
        + (f" ({', '.join(snap.drifted)})" if snap.drifted else "")
        + f", score {snap.score:.3f} (largest flagged PSI; the alert fires above 0.3)"
    )
    lines.append(
        f"rule: flagged when PSI > max({snap.floor:g}, chi2.isf({snap.alpha:g} / features, "
        f"df) / n_eff); no verdict under {snap.min_rows} rows"
    )
    lines.extend(f"note: {n}" for n in snap.notes)
    return "\n".join(lines)


# ---- reading and judging -----------------------------------------------------------------------


def _dur(seconds: float) -> str:
    """``24 h``, ``7 d``, ``90 min``, ``30 s`` (as training.drift words its reasons)."""
    if seconds >= 2 * 86_400 and seconds % 86_400 == 0:
        return f"{seconds / 86_400:g} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def promoted_at(registry: Any, alias: str, version: str) -> float | None:
    """When ``alias`` last started pointing at ``version`` (epoch seconds), from the
    registry's alias history; None when ``alias`` is a version name, points elsewhere, or
    the history does not say."""
    try:
        history = registry.history(alias)
    except (ConfigError, ModelLoadError, ValueError):
        return None
    if not history or history[-1].get("version") != version:
        return None
    try:
        return datetime.fromisoformat(str(history[-1]["at"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


class _Layout:
    """A manifest's feature names and reference, and one flat count vector per window:
    every feature's bins (training.drift.bin_counts) end to end, then the ETA grid."""

    def __init__(self, manifest: Mapping[str, Any], version: str) -> None:
        names = manifest.get("feature_names")
        reference = manifest.get("reference")
        if not isinstance(names, list) or not isinstance(reference, Mapping):
            raise ModelLoadError(
                f"model {version}: its manifest has no feature_names/reference histograms, so "
                "drift cannot be judged: retrain it with this intellilog"
            )
        missing = [n for n in names if n not in reference]
        if missing:
            raise ModelLoadError(
                f"model {version}: no reference histogram for {missing}: retrain it"
            )
        self.version = version
        self.names = [str(n) for n in names]
        self.reference: dict[str, Mapping[str, Any]] = {n: reference[n] for n in self.names}
        pred = manifest.get("prediction_reference")
        self.eta_manifest: Mapping[str, Any] | None = pred if isinstance(pred, Mapping) else None
        self.slices: list[slice] = []
        at = 0
        for n in self.names:
            size = bin_counts(self.reference[n], np.empty(0)).size
            self.slices.append(slice(at, at + size))
            at += size
        self.eta = slice(at, at + _ETA_GRID.size + 2)
        at = self.eta.stop
        self.eta_m: slice | None = None  # the ETAs in the manifest reference's own bins
        if self.eta_manifest is not None:
            width = bin_counts(self.eta_manifest, np.empty(0)).size
            self.eta_m = slice(at, at + width)
            at += width
        self.size = at

    def counts(self, X: np.ndarray, eta: np.ndarray) -> np.ndarray:
        out = np.zeros(self.size, dtype=np.int64)
        if X.shape[0] == 0:
            return out
        if X.ndim != 2 or X.shape[1] != len(self.names):
            raise DataError(
                f"logged feature rows of model {self.version} have {X.shape[1]} columns but "
                f"its manifest names {len(self.names)} features: were rows of another spec "
                "logged under this version?"
            )
        for j, (name, s) in enumerate(zip(self.names, self.slices, strict=True)):
            out[s] = bin_counts(self.reference[name], X[:, j])
        out[self.eta] = _eta_grid_counts(eta)
        if self.eta_m is not None and self.eta_manifest is not None:
            out[self.eta_m] = bin_counts(self.eta_manifest, eta)
        return out

    def features(self, total: np.ndarray) -> dict[str, np.ndarray]:
        return {n: total[s] for n, s in zip(self.names, self.slices, strict=True)}


def _eta_grid_counts(eta: np.ndarray) -> np.ndarray:
    """ETAs per bin of the grid: ``(-inf, g0), [g0, g1), ..., [g_last, inf)``, NaN last."""
    v = np.asarray(eta, dtype=np.float64).reshape(-1)
    nan = np.isnan(v)
    c = np.bincount(np.searchsorted(_ETA_GRID, v[~nan], side="right"), minlength=_ETA_GRID.size + 1)
    return np.append(c, np.count_nonzero(nan)).astype(np.int64)


def _eta_reference(grid_counts: np.ndarray, bins: int = 10) -> dict[str, Any] | None:
    """A numeric reference entry (training.drift layout) from ETA grid counts: edges at the
    grid points nearest above the deciles; None when there is no finite ETA."""
    finite = grid_counts[:-1].astype(np.float64)
    m = float(grid_counts.sum())
    if finite.sum() <= 0:
        return None
    cum = np.cumsum(finite) / finite.sum()
    idx = np.searchsorted(cum, np.arange(1, bins) / bins)
    edges = np.unique(_ETA_GRID[idx[idx < _ETA_GRID.size]])
    shares = np.bincount(_grid_to_bins(edges), weights=finite, minlength=edges.size + 1) / m
    return {
        "kind": "numeric",
        "n": int(m),
        "nan_share": float(grid_counts[-1] / m),
        "edges": [float(e) for e in edges],
        "shares": [float(s) for s in shares],
    }


def _grid_to_bins(edges: np.ndarray) -> np.ndarray:
    """The bin of ``edges`` each ETA grid bin falls in (the edges are grid points)."""
    lower = np.concatenate([[-np.inf], _ETA_GRID])
    return np.searchsorted(edges, lower, side="right")


def _regrid(grid_counts: np.ndarray, entry: Mapping[str, Any]) -> np.ndarray:
    """ETA grid counts cut into the bins of a reference built by :func:`_eta_reference`."""
    edges = np.asarray(entry["edges"], dtype=np.float64)
    c = np.bincount(
        _grid_to_bins(edges), weights=grid_counts[:-1].astype(np.float64), minlength=edges.size + 1
    )
    return np.append(c, grid_counts[-1]).astype(np.int64)


def _judge(
    layout: _Layout,
    total: np.ndarray,
    *,
    tenant: str,
    window_s: float,
    now: float,
    covered_s: float | None,
    truncated: bool,
    cycles: Mapping[str, float] | None,
    alpha: float,
    min_rows: int,
    floor: float,
    eta_counts: np.ndarray | None = None,
    eta_reference: tuple[str, Mapping[str, Any]] | None = None,
    notes: Sequence[str] = (),
) -> DriftSnapshot:
    skip = calendar_skips(layout.names, covered_s, cycles=cycles, floor=floor)
    got = drift_rule_counts(
        layout.reference,
        layout.features(total),
        alpha=alpha,
        min_rows=min_rows,
        floor=floor,
        skip=skip,
    )
    features = tuple(
        FeatureDrift(
            name=n,
            kind=str(f["kind"]),
            psi=float(f["psi"]),
            critical=f["critical"],
            flagged=bool(f["flagged"]),
            skipped=f["skipped"],
        )
        for n, f in got["features"].items()
    )
    prediction = None
    if eta_reference is not None and eta_counts is not None:
        source, entry = eta_reference
        p = drift_rule_counts(
            {_ETA: entry}, {_ETA: eta_counts}, alpha=alpha, min_rows=min_rows, floor=floor
        )
        f = p["features"][_ETA]
        prediction = PredictionDrift(
            reference=source,
            reference_rows=int(entry.get("n", 0)),
            rows=int(p["n_rows"]),
            psi=float(f["psi"]),
            critical=f["critical"],
            flagged=bool(f["flagged"]),
            verdict=str(p["verdict"]),
        )
    return DriftSnapshot(
        version=layout.version,
        tenant=tenant,
        window_s=float(window_s),
        taken_at=float(now),
        rows=int(got["n_rows"]),
        covered_s=covered_s,
        truncated=truncated,
        verdict=str(got["verdict"]),
        score=float(got["score"]),
        drifted=tuple(got["drifted"]),
        features=features,
        prediction=prediction,
        alpha=float(alpha),
        floor=float(floor),
        min_rows=int(min_rows),
        notes=tuple(notes),
    )


def _pick(samples: Sequence[FeatureSample], version: str, width: int) -> FeatureSample:
    for s in samples:
        if s.model_version == version:
            return s
    return FeatureSample(version, np.zeros((0, width), np.float32), np.zeros(0))


async def _read_counts(
    store: Store, tenant: str, layout: _Layout, since: float, limit: int
) -> tuple[np.ndarray, bool]:
    """The layout's counts of the version's rows logged since ``since`` (the newest
    ``limit`` rows of ``tenant``), and whether the read hit ``limit``."""
    samples = await store.recent_features(tenant, since, limit)
    truncated = sum(len(s.eta) for s in samples) >= limit
    mine = _pick(samples, layout.version, len(layout.names))
    X = np.asarray(mine.features, dtype=np.float64).reshape(-1, len(layout.names))
    # tens of thousands of rows per read: count them off the event loop
    return await asyncio.to_thread(layout.counts, X, mine.eta), truncated


def _check_window(window_s: float, limit: int) -> None:
    if not (math.isfinite(window_s) and window_s > 0):
        raise ConfigError(f"window_s={window_s!r}: must be > 0 seconds")
    if limit < 1:
        raise ConfigError(f"limit={limit!r}: must be >= 1 row")


_TRUNCATED_NOTE = (
    "the read hit its limit of {limit} rows: the window holds the newest rows only, its span "
    "is unknown and calendar features are left out (use a shorter window or a larger limit)"
)
_NO_ETA_NOTE = (
    "ETA distribution not compared: the manifest has no prediction_reference (the monitor "
    "compares with its first full window)"
)


async def drift_snapshot(
    store: Store,
    manifest: Mapping[str, Any],
    tenant: str,
    window_s: float,
    now: float | None = None,
    *,
    version: str | None = None,
    serving_since: float | None = None,
    limit: int = DEFAULT_LIMIT,
    cycles: Mapping[str, float] | None = None,
    alpha: float = ALPHA,
    min_rows: int = MIN_ROWS,
    floor: float = PSI_FLOOR,
) -> DriftSnapshot:
    """The drift rule on the rows of the manifest's version logged in the last ``window_s``.

    One read (:meth:`Store.recent_features`, the newest ``limit`` rows of ``tenant`` since
    ``now − window_s``, or since ``serving_since`` when the version started serving later).
    ``version`` defaults to the manifest's. The ETA distribution is compared with the
    manifest's ``prediction_reference`` when it has one. Raises ModelLoadError for a
    manifest without reference histograms, StoreError when the database fails.
    """
    _check_window(window_s, limit)
    now = time.time() if now is None else float(now)
    version = str(version or manifest.get("version") or "")
    if not version:
        raise ModelLoadError("the manifest names no version: pass version=")
    layout = _Layout(manifest, version)
    start = now - window_s
    if serving_since is not None and serving_since > start:
        start = min(serving_since, now)
    total, truncated = await _read_counts(store, tenant, layout, start, limit)
    notes = [_TRUNCATED_NOTE.format(limit=limit)] if truncated else []
    ref: tuple[str, Mapping[str, Any]] | None = None
    eta = None
    if layout.eta_manifest is not None and layout.eta_m is not None:
        ref, eta = ("manifest", layout.eta_manifest), total[layout.eta_m]
    else:
        notes.append(_NO_ETA_NOTE)
    return _judge(
        layout,
        total,
        tenant=tenant,
        window_s=window_s,
        now=now,
        covered_s=None if truncated else now - start,
        truncated=truncated,
        cycles=cycles,
        alpha=alpha,
        min_rows=min_rows,
        floor=floor,
        eta_counts=eta,
        eta_reference=ref,
        notes=notes,
    )


# ---- the monitor -------------------------------------------------------------------------------


class _Served(Protocol):
    version: str
    manifest: dict[str, Any]


@dataclass
class _Slice:
    end: float
    counts: np.ndarray
    truncated: bool


@dataclass
class _Track:
    """The window of one version: count slices, oldest first, and where coverage starts."""

    layout: _Layout
    start: float
    last: float
    slices: deque[_Slice] = field(default_factory=deque)
    eta_first: dict[str, Any] | None = None  # the first full window's ETAs (reference)


class DriftMonitor:
    """Keeps the drift window of the served version and publishes it as gauges.

    ``current`` returns what is served now: a :class:`~server.models.LoadedModel` (or any
    object with ``version`` and ``manifest``), a ``(version, manifest)`` pair, or None.
    ``store``: the store or a function returning it (None while there is none).
    ``serving_since(version)``: when the version started serving (e.g. ``lambda v:
    promoted_at(registry, alias, v)``); without it a version is taken to have served
    the whole window. The latest snapshot is :attr:`snapshot` (None before the first
    refresh, or while nothing is served).

    Each refresh reads the rows logged since the previous one (at most ``limit``), adds
    their bin counts as one slice, drops slices older than the window and judges the sum.
    """

    def __init__(
        self,
        store: Store | Callable[[], Store | None],
        current: Callable[[], _Served | tuple[str, Mapping[str, Any]] | None],
        tenant: str,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        serving_since: Callable[[str], float | None] | None = None,
        limit: int = DEFAULT_LIMIT,
        cycles: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        alpha: float = ALPHA,
        min_rows: int = MIN_ROWS,
        floor: float = PSI_FLOOR,
        bootstrap_pieces: int = 48,
    ) -> None:
        _check_window(window_s, limit)
        self._store = store
        self._current = current
        self.tenant = tenant
        self.window_s = float(window_s)
        self._since = serving_since
        self.limit = int(limit)
        self.cycles = dict(cycles or {})
        self._clock = clock
        self.alpha, self.min_rows, self.floor = alpha, min_rows, floor
        self._pieces = max(1, int(bootstrap_pieces))
        self._track: _Track | None = None
        self._features: set[str] = set()
        self._versions: set[str] = set()
        self.snapshot: DriftSnapshot | None = None

    def _served(self) -> tuple[str, Mapping[str, Any]] | None:
        cur = self._current()
        if cur is None:
            return None
        if isinstance(cur, tuple):
            return str(cur[0]), cur[1]
        return str(cur.version), cur.manifest

    async def _read(self, store: Store, layout: _Layout, since: float) -> tuple[np.ndarray, bool]:
        return await _read_counts(store, self.tenant, layout, since, self.limit)

    async def _bootstrap(self, store: Store, layout: _Layout, now: float) -> _Track:
        """The window as far back as reads stay under the limit, in pieces, newest first:
        the counts of piece ``[t_k, t_k-1)`` are those since ``t_k`` minus those since
        ``t_k-1``."""
        start = now - self.window_s
        # the registry's alias history: a file, or an object store, read off the event loop
        since = (
            await asyncio.to_thread(self._since, layout.version)
            if self._since is not None
            else None
        )
        if since is not None and since > start:
            start = min(since, now)
        track = _Track(layout, start=now, last=now)
        step = (now - start) / self._pieces
        prev = np.zeros(layout.size, np.int64)
        pieces: list[_Slice] = []
        for k in range(1, self._pieces + 1):
            t = now - k * step if k < self._pieces else start
            counts, truncated = await self._read(store, layout, t)
            if truncated:
                break
            pieces.append(_Slice(end=now - (k - 1) * step, counts=counts - prev, truncated=False))
            prev = counts
            track.start = t
        track.slices.extend(reversed(pieces))
        return track

    async def refresh(self) -> DriftSnapshot | None:
        """Read the new rows, judge the window, set the gauges. None while nothing is served
        or there is no store. Raises StoreError when the database fails (the window and the
        gauges keep their state), ModelLoadError for a manifest without references."""
        store = self._store if isinstance(self._store, Store) else self._store()
        served = self._served()
        if store is None or served is None:
            return None
        version, manifest = served
        now = float(self._clock())
        track = self._track
        if track is None or track.layout.version != version:
            track = await self._bootstrap(store, _Layout(manifest, version), now)
            self._track = track
        else:
            counts, truncated = await self._read(store, track.layout, track.last)
            track.slices.append(_Slice(end=now, counts=counts, truncated=truncated))
            track.last = now
        edge = now - self.window_s
        while track.slices and track.slices[0].end <= edge:
            track.slices.popleft()
        track.start = max(track.start, edge)
        total = (
            np.sum([s.counts for s in track.slices], axis=0)
            if track.slices
            else np.zeros(track.layout.size, np.int64)
        )
        covered = now - track.start
        lost = sum(s.truncated for s in track.slices)
        notes = []
        if lost:
            notes.append(
                f"{lost} of the window's reads hit the limit of {self.limit} rows: part of the "
                "traffic of those minutes is not counted (refresh more often)"
            )
        if covered < self.window_s * (1 - 1e-9):
            notes.append(
                f"the window is still filling: {_dur(covered)} of {_dur(self.window_s)} counted"
            )
        grid = total[track.layout.eta]
        ref: tuple[str, Mapping[str, Any]] | None = None
        eta = None
        layout = track.layout
        if layout.eta_manifest is not None and layout.eta_m is not None:
            ref, eta = ("manifest", layout.eta_manifest), total[layout.eta_m]
        else:
            full = covered >= self.window_s * (1 - 1e-9)
            if track.eta_first is None and full and int(grid.sum()) >= self.min_rows:
                track.eta_first = _eta_reference(grid)
            if track.eta_first is not None:
                ref = ("first window", track.eta_first)
                eta = _regrid(grid, track.eta_first)
            else:
                notes.append(
                    "ETA distribution not compared yet: the reference is the first full "
                    f"window of {version} ({_dur(self.window_s)}, at least {self.min_rows} rows)"
                )
        snap = _judge(
            track.layout,
            total,
            tenant=self.tenant,
            window_s=self.window_s,
            now=now,
            covered_s=covered,
            truncated=bool(lost),
            cycles=self.cycles,
            alpha=self.alpha,
            min_rows=self.min_rows,
            floor=self.floor,
            eta_counts=eta,
            eta_reference=ref,
            notes=notes,
        )
        self.publish(snap)
        self.snapshot = snap
        return snap

    def publish(self, snap: DriftSnapshot) -> None:
        """Set the gauges from ``snap``; remove the series of other versions and features
        (:func:`server.metrics.forget`)."""
        feats = {f.name for f in snap.features}
        for f in snap.features:
            DRIFT_SCORE.labels(f.name).set(f.score)
        MODEL_DRIFT_SCORE.labels(snap.version).set(snap.score)
        for gauge, stale in (
            (DRIFT_SCORE, self._features - feats),
            (MODEL_DRIFT_SCORE, self._versions - {snap.version}),
        ):
            for label in stale:
                metrics.forget(gauge, label)
        self._features, self._versions = feats, {snap.version}

    async def run(self, interval_s: float) -> None:
        """Refresh now, then every ``interval_s`` seconds, until cancelled (a failing
        refresh keeps the last figures: :func:`server.monitoring.timer.refresh_every`)."""
        await refresh_every(
            self.refresh, interval_s, "drift", (StoreError, ModelLoadError, DataError)
        )
