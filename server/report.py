"""``intellilog report``: one self-contained HTML page about a model version, with pictures.

What the page holds (each section says why it is empty rather than failing):

* **header**: version, created, spec name and hash, engines the version can serve, the
  training data (rows, period, quality score);
* **holdout metrics** of the manifest: the model against the naive baselines;
* **on a labelled file** (``data=``, any file of the spec's columns: the holdout, a later
  period): the same metrics on it, predicted against actual (scatter, or hexbin for many
  rows), calibration of the p10–p90 interval (coverage per predicted-ETA decile against the
  nominal share), and the error by local hour, by weekday and by each categorical level.
  Rows go through the loaded model's own pipeline (:func:`training.io.to_columns`) and its
  engine (:func:`server.models.load_model`'s default), as ``intellilog evaluate`` does;
* **live** (the store at ``database_url``): daily MAE and count of the version's
  predictions with feedback, and the drift rule per feature on its logged inputs
  (:func:`server.monitoring.drift.drift_snapshot`: PSI bars).

Units: the manifest's metrics and every figure are in the spec's target unit (minutes for
the delivery spec); live ETAs and actual times (stored in minutes) are converted to it.

Nothing is fetched from anywhere: figures are PNG images inlined as ``data:`` URIs, the
style sheet is in the page. Figures are drawn with matplotlib's Agg canvas on
:class:`~matplotlib.figure.Figure` objects (no pyplot, no global backend switch). The page
is written to a temporary file beside the destination and renamed into place.
"""

from __future__ import annotations

import asyncio
import base64
import html
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kernels.errors import ConfigError, DataError, ModelLoadError, StoreError
from kernels.spec import FeatureSpec
from server.models import LoadedModel, load_model, model_spec, servable_engines
from training.atomic import write_text_atomic
from training.metrics import BaselineModel, interval_metrics, point_metrics
from training.registry import Registry

__all__ = [
    "DEFAULT_LIVE_DAYS",
    "ReportResult",
    "build_report",
    "default_report_path",
    "make_report",
    "write_atomic",
]

#: How far back the live section reads predictions with feedback, unless told.
DEFAULT_LIVE_DAYS = 30.0
#: Above this many rows the predicted-vs-actual plot is a hexbin, not a scatter.
_HEXBIN_FROM = 2000
#: Categorical levels shown one by one (the rarest of the others are pooled).
_MAX_LEVELS = 25
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_UNIT_SHORT = {"minutes": "min", "hours": "h", "seconds": "s"}
_BLUE, _ORANGE, _RED, _GREY = "#3b6ea5", "#e08a2c", "#c0392b", "#9aa5b1"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`make_report` wrote."""

    path: Path
    version: str
    bytes: int
    images: int
    data_rows: int | None  # valid rows of the data file (None: no file given)
    live_rows: int  # predictions of the version with feedback in the live period
    drift_rows: int  # logged rows of the version in the drift window
    notes: tuple[str, ...] = ()  # why a section is empty


@dataclass
class _Page:
    """The page under construction: HTML parts, image count and notes."""

    parts: list[str] = field(default_factory=list)
    images: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.parts.append(text)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.add(f'<p class="note">{_e(text)}</p>')

    def figure(self, fig: Any, alt: str, caption: str = "") -> None:
        self.images += 1
        cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
        self.add(f'<figure><img alt="{_e(alt)}" src="{_png(fig)}">{cap}</figure>')


# ---- small helpers ------------------------------------------------------------------------------


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _f(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v * 100:.1f}%"


def _span(seconds: float) -> str:
    days = seconds / 86_400
    return f"{days:g} days" if days >= 2 and days == int(days) else f"{seconds / 3600:g} h"


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def _table(head: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table{c}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _new_figure(w: float = 7.5, h: float = 3.6) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas, set on the figure: no pyplot, no global backend
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---- error by group ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    label: str
    rows: int
    mae: float
    bias: float  # mean (eta − actual): positive means ETAs too long
    coverage: float


def _by_group(
    keys: np.ndarray,
    labels: Sequence[str],
    y: np.ndarray,
    eta: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> list[_Group]:
    """One :class:`_Group` per key ``0..len(labels)-1`` that has rows, in key order."""
    k = len(labels)
    n = np.bincount(keys, minlength=k).astype(np.float64)
    err = eta - y
    abs_sum = np.bincount(keys, np.abs(err), minlength=k)
    sum_ = np.bincount(keys, err, minlength=k)
    cov = np.bincount(keys, ((y >= lo) & (y <= hi)).astype(np.float64), minlength=k)
    return [
        _Group(labels[i], int(n[i]), abs_sum[i] / n[i], sum_[i] / n[i], cov[i] / n[i])
        for i in range(k)
        if n[i] > 0
    ]


def _group_rows(groups: Sequence[_Group]) -> list[list[object]]:
    return [[g.label, g.rows, _f(g.mae), _f(g.bias), _pct(g.coverage)] for g in groups]


def _group_figure(groups: Sequence[_Group], title: str, unit: str, horizontal: bool) -> Any:
    fig = _new_figure(7.5, max(2.8, 0.28 * len(groups) + 1.2) if horizontal else 3.4)
    ax = fig.add_subplot()
    pos = np.arange(len(groups))
    mae = [g.mae for g in groups]
    bias = [g.bias for g in groups]
    labels = [f"{g.label} ({g.rows})" if horizontal else g.label for g in groups]
    if horizontal:
        ax.barh(pos, mae, color=_BLUE, label="MAE")
        ax.plot(bias, pos, "D", color=_ORANGE, label="bias (ETA − actual)")
        ax.set_yticks(pos, labels)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.6)
        ax.set_xlabel(unit)
    else:
        ax.bar(pos, mae, color=_BLUE, label="MAE")
        ax.plot(pos, bias, "D-", color=_ORANGE, ms=4, lw=1, label="bias (ETA − actual)")
        ax.set_xticks(pos, labels)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylabel(unit)
    ax.set_title(title, fontsize=11)
    fig.legend(fontsize=8, loc="outside lower center", ncol=2, frameon=False)
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    return fig


# ---- sections ----------------------------------------------------------------------------------


def _header(page: _Page, version: str, manifest: dict[str, Any], spec: FeatureSpec) -> None:
    d = manifest.get("data", {})
    met = manifest.get("metrics", {})
    rows = [
        ("version", version),
        ("created", manifest.get("created_at", "–")),
        ("spec", f"{spec.name} (hash {manifest.get('spec_hash', spec.hash)})"),
        ("time zone", spec.timezone),
        (
            "target",
            f"{spec.goal.name} in {spec.goal.unit}, accuracy tolerance ±{spec.goal.tolerance:g}",
        ),
        ("engines it can serve", ", ".join(servable_engines(manifest)) or "none"),
        (
            "training data",
            f"{d.get('valid_rows', '–')} valid of {d.get('rows', '–')} rows in {d.get('path', '–')}"
            f" (quality {_f(d.get('quality'), 1)})",
        ),
        ("training period", f"{d.get('train_from', '–')} .. {d.get('train_to', '–')}"),
        (
            "split",
            f"train {met.get('train_rows', '–')}, early stopping {met.get('valid_rows', '–')}, "
            f"holdout {met.get('holdout', {}).get('rows', '–')} (latest by event time)",
        ),
        ("intellilog", manifest.get("intellilog", "–")),
    ]
    page.add('<section id="header"><table class="kv"><tbody>')
    page.add("".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows))
    page.add("</tbody></table></section>")


def _metrics_rows(model: dict[str, Any], baselines: dict[str, Any]) -> list[list[object]]:
    out: list[list[object]] = []
    for name, m in [("model", model), *baselines.items()]:
        out.append(
            [
                name,
                _f(m.get("mae")),
                _f(m.get("rmse")),
                _f(m.get("p90_ae")),
                _pct(m.get("accuracy")),
                _pct(m["coverage"]) if "coverage" in m else "–",
                _f(m["width"]) if "width" in m else "–",
            ]
        )
    return out


def _metrics_head(tolerance: float, unit: str) -> list[str]:
    return [
        "",
        f"MAE ({unit})",
        f"RMSE ({unit})",
        f"p90 AE ({unit})",
        f"within ±{tolerance:g} {unit}",
        "coverage",
        f"width ({unit})",
    ]


def _holdout(page: _Page, manifest: dict[str, Any], unit: str) -> None:
    met = manifest.get("metrics", {})
    page.add('<section id="holdout"><h2>Holdout metrics</h2>')
    h = met.get("holdout")
    if not h or "model" not in met:
        page.note("the manifest holds no holdout metrics")
        page.add("</section>")
        return
    page.add(
        f"<p>{_e(h.get('rows', '–'))} rows, {_e(h.get('from', '–'))} .. {_e(h.get('to', '–'))}"
        " (the latest rows by event time, never trained on). The naive baselines: the training"
        " median for every row, and distance ÷ the training median speed.</p>"
    )
    tol = float(h.get("accuracy_tolerance", float("nan")))
    page.add(
        _table(
            _metrics_head(tol, unit),
            _metrics_rows(met["model"], met.get("baselines", {})),
            "metrics",
        )
    )
    page.add("</section>")


@dataclass
class _Scored:
    """Labelled rows of the data file, scored (target unit)."""

    y: np.ndarray
    eta: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    hour: np.ndarray
    weekday: np.ndarray
    cats: np.ndarray
    distance: np.ndarray
    refused: int
    period: tuple[str, str]


def _score_file(model: LoadedModel, path: Path) -> _Scored:
    from training.io import read_table, to_columns

    spec = model.pipe.spec
    table = read_table(path, spec, need_target=True)
    conv = to_columns(table, model.pipe, with_target=True)
    if conv.n_valid == 0:
        raise DataError(f"{path}: no valid rows to report on ({len(conv.reject_rows)} refused)")
    X = model.pipe.matrix(conv.columns)
    eta, p10, p90 = model.predict(X)
    per = spec.goal.minutes  # engines answer in minutes; the target is in its own unit
    assert conv.target is not None
    cols = conv.columns
    local = cols.utc.astype(np.int64) + cols.offset.astype(np.int64)
    days = np.floor_divide(local, 86_400)
    names = list(spec.feature_names)
    t0, t1 = int(cols.utc.min()), int(cols.utc.max())
    return _Scored(
        y=np.asarray(conv.target, np.float64),
        eta=np.asarray(eta, np.float64) / per,
        lo=np.asarray(p10, np.float64) / per,
        hi=np.asarray(p90, np.float64) / per,
        hour=((local - days * 86_400) // 3600).astype(np.int64),
        weekday=((days + 3) % 7).astype(np.int64),
        cats=cols.cats,
        distance=X[:, names.index("distance_km")].astype(np.float64)
        if "distance_km" in names
        else np.zeros(len(X)),
        refused=len(conv.reject_rows),
        period=(
            datetime.fromtimestamp(t0, UTC).isoformat(),
            datetime.fromtimestamp(t1, UTC).isoformat(),
        ),
    )


def _scatter_figure(s: _Scored, unit: str) -> Any:
    fig = _new_figure(6.0, 5.2)
    ax = fig.add_subplot()
    top = float(max(np.quantile(s.y, 0.995), np.quantile(s.eta, 0.995))) * 1.05
    inside = (s.y <= top) & (s.eta <= top)  # the extreme 0.5 % would squash the rest
    y, eta = s.y[inside], s.eta[inside]
    if len(s.y) >= _HEXBIN_FROM:
        hb = ax.hexbin(
            y, eta, gridsize=60, extent=(0, top, 0, top), mincnt=1, bins="log", cmap="viridis"
        )
        fig.colorbar(hb, ax=ax, label="rows (log)")
    else:
        ax.scatter(y, eta, s=6, alpha=0.35, color=_BLUE, edgecolors="none")
    ax.plot([0, top], [0, top], color=_RED, lw=1, label="perfect")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel(f"actual ({unit})")
    ax.set_ylabel(f"predicted ETA ({unit})")
    ax.set_title("Predicted against actual", fontsize=11)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def _calibration(
    s: _Scored, nominal: float, qnames: tuple[str, str], unit: str, page: _Page
) -> None:
    edges = np.quantile(s.eta, np.linspace(0, 1, 11))
    dec = np.clip(np.searchsorted(edges[1:-1], s.eta, side="right"), 0, 9)
    n = np.bincount(dec, minlength=10).astype(np.float64)
    inside = np.bincount(dec, ((s.y >= s.lo) & (s.y <= s.hi)).astype(np.float64), minlength=10)
    below = np.bincount(dec, (s.y < s.lo).astype(np.float64), minlength=10)
    above = np.bincount(dec, (s.y > s.hi).astype(np.float64), minlength=10)
    keep = np.flatnonzero(n > 0)
    labels = [f"{edges[i]:.0f}–{edges[i + 1]:.0f}" for i in keep]
    cov, bel, abv = inside[keep] / n[keep], below[keep] / n[keep], above[keep] / n[keep]
    fig = _new_figure(7.5, 3.6)
    ax = fig.add_subplot()
    pos = np.arange(len(keep))
    ax.bar(pos, cov, color=_BLUE, label="actual inside the interval")
    ax.plot(pos, bel, "v", color=_ORANGE, label=f"below {qnames[0]}")
    ax.plot(pos, abv, "^", color=_RED, label=f"above {qnames[1]}")
    ax.axhline(nominal, color="black", ls="--", lw=1, label=f"nominal {nominal * 100:.0f}%")
    ax.set_xticks(pos, labels, rotation=30, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"predicted ETA decile ({unit})")
    ax.set_ylabel("share of rows")
    ax.set_title(f"Calibration of the {qnames[0]}–{qnames[1]} interval", fontsize=11)
    fig.legend(fontsize=8, loc="outside lower center", ncol=4, frameon=False)
    ax.grid(alpha=0.3, axis="y")
    page.figure(
        fig,
        "interval coverage by predicted-ETA decile",
        f"Share of actual times inside [{qnames[0]}, {qnames[1]}] per decile of the predicted "
        f"ETA; the dashed line is the nominal {nominal * 100:.0f}%.",
    )
    page.add(
        _table(
            ["predicted ETA", "rows", "coverage", f"below {qnames[0]}", f"above {qnames[1]}"],
            [
                [lab, int(n[i]), _pct(c), _pct(b), _pct(a)]
                for lab, i, c, b, a in zip(labels, keep, cov, bel, abv, strict=True)
            ],
        )
    )


def _data_sections(
    page: _Page, model: LoadedModel, path: Path, manifest: dict[str, Any], unit: str
) -> int:
    spec = model.pipe.spec
    s = _score_file(model, path)
    tol = spec.goal.tolerance
    b = manifest.get("baselines", {})
    base = BaselineModel(b.get("median_minutes", 0.0), b.get("median_km_per_min", 0.0))
    page.add('<section id="data"><h2>On the data file</h2>')
    page.add(
        f"<p>{_e(path)}: {len(s.y)} valid rows ({s.refused} refused), event times "
        f"{_e(s.period[0])} .. {_e(s.period[1])}; predicted with the "
        f"<code>{_e(model.engine_name)}</code> engine.</p>"
    )
    page.add(
        _table(
            _metrics_head(tol, unit),
            _metrics_rows(
                {**point_metrics(s.y, s.eta, tol), **interval_metrics(s.y, s.lo, s.hi)},
                base.evaluate(s.distance, s.y, tol),
            ),
            "metrics",
        )
    )
    page.add("</section>")

    page.add('<section id="scatter"><h2>Predicted against actual</h2>')
    kind = "hexbin (log counts)" if len(s.y) >= _HEXBIN_FROM else "one dot per row"
    page.figure(
        _scatter_figure(s, unit),
        "predicted against actual",
        f"{kind}; the red line is y = x; the axes end at the 99.5th percentile of either.",
    )
    page.add("</section>")

    qs = manifest.get("settings", {}).get("quantiles", [0.1, 0.9])
    lo_q, hi_q = float(qs[0]), float(qs[1])
    qnames = (f"p{lo_q * 100:g}", f"p{hi_q * 100:g}")
    page.add('<section id="calibration"><h2>Interval calibration</h2>')
    _calibration(s, hi_q - lo_q, qnames, unit, page)
    page.add("</section>")

    head = ["", "rows", f"MAE ({unit})", f"bias ({unit})", "coverage"]
    hours = _by_group(s.hour, [f"{h:02d}" for h in range(24)], s.y, s.eta, s.lo, s.hi)
    page.add(f'<section id="by-hour"><h2>Error by local hour ({_e(spec.timezone)})</h2>')
    page.figure(
        _group_figure(hours, "Error by local hour of the event time", unit, horizontal=False),
        "error by local hour",
        "Bars: mean absolute error; diamonds: mean (ETA − actual), positive when ETAs run long.",
    )
    page.add(_table(["hour", *head[1:]], _group_rows(hours)))
    page.add("</section>")

    days = _by_group(s.weekday, _WEEKDAYS, s.y, s.eta, s.lo, s.hi)
    page.add('<section id="by-weekday"><h2>Error by weekday</h2>')
    page.figure(
        _group_figure(days, "Error by local weekday", unit, horizontal=False),
        "error by weekday",
        "Bars: mean absolute error; diamonds: mean (ETA − actual).",
    )
    page.add(_table(["weekday", *head[1:]], _group_rows(days)))
    page.add("</section>")

    for k, c in enumerate(spec.categorical):
        levels = [*model.pipe.levels[c.name], "unknown"]
        groups = _by_group(s.cats[:, k].astype(np.int64), levels, s.y, s.eta, s.lo, s.hi)
        shown, note = _top_levels(groups, s, s.cats[:, k].astype(np.int64), levels)
        page.add(f'<section id="by-{_e(c.name)}" class="by-level"><h2>Error by {_e(c.name)}</h2>')
        page.figure(
            _group_figure(shown, f"Error by {c.name}", unit, horizontal=True),
            f"error by {c.name}",
            "Bars: mean absolute error per level (rows in brackets); diamonds: mean (ETA − actual)."
            + (f" {note}" if note else ""),
        )
        page.add(_table([c.name, *head[1:]], _group_rows(shown)))
        page.add("</section>")
    return len(s.y)


def _top_levels(
    groups: list[_Group], s: _Scored, codes: np.ndarray, levels: Sequence[str]
) -> tuple[list[_Group], str]:
    """The ``_MAX_LEVELS`` - 1 most frequent levels, the rest pooled into one row."""
    if len(groups) <= _MAX_LEVELS:
        return groups, ""
    top = sorted(groups, key=lambda g: -g.rows)[: _MAX_LEVELS - 1]
    keep = {g.label for g in top}
    rest = np.array([lv not in keep for lv in levels])[codes]
    pooled = _by_group(rest.astype(np.int64), ["", "other"], s.y, s.eta, s.lo, s.hi)[-1]
    n_rest = len(groups) - len(top)
    other = _Group(f"{n_rest} other levels", pooled.rows, pooled.mae, pooled.bias, pooled.coverage)
    return [*top, other], f"The {n_rest} rarest levels are pooled."


# ---- live section ------------------------------------------------------------------------------


@dataclass
class _Live:
    rows: list[Any]  # JoinedRow of the version
    drift: Any  # DriftSnapshot | None
    drift_error: str | None
    store_url: str


async def _read_live(
    url: str,
    version: str,
    manifest: dict[str, Any],
    tenant: str,
    since: float,
    window_s: float,
    cycles: dict[str, float] | None,
    now: float,
) -> _Live:
    from server.monitoring.drift import drift_snapshot
    from server.store import open_store

    async with await open_store(url) as store:
        joined = [r for r in await store.joined(tenant, since) if r.model_version == version]
        drift, why = None, None
        try:
            drift = await drift_snapshot(
                store, manifest, tenant, window_s, now, version=version, cycles=cycles
            )
        except (ModelLoadError, ConfigError, StoreError) as e:
            why = str(e)
        return _Live(joined, drift, why, store.url or url)


def _sqlite_missing(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL when it does not exist (opening would create it)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix + ":memory:":
        return None
    path = Path(url[len(prefix) :])
    return None if path.exists() else path


def _live_sections(
    page: _Page,
    version: str,
    manifest: dict[str, Any],
    spec: FeatureSpec,
    url: str | None,
    tenant: str,
    days: float,
    window_s: float,
    cycles: dict[str, float] | None,
    now: float,
) -> tuple[int, int]:
    unit = _UNIT_SHORT.get(spec.goal.unit, spec.goal.unit)
    page.add('<section id="live"><h2>Live error</h2>')
    where = f"for model {version} (tenant {tenant})"
    live: _Live | None = None
    if url is None:
        page.note(f"no feedback yet {where}: no store given (DATABASE_URL)")
    elif (missing := _sqlite_missing(url)) is not None:
        page.note(f"no feedback yet {where}: the store {missing} does not exist (nothing logged)")
    else:
        try:
            live = asyncio.run(
                _read_live(
                    url, version, manifest, tenant, now - days * 86_400, window_s, cycles, now
                )
            )
        except StoreError as e:
            page.note(f"no live figures {where}: the store could not be read ({e})")
    if live is not None:
        _live_error(page, live, where, days, spec, unit)
    page.add("</section>")
    page.add('<section id="drift"><h2>Drift of the inputs</h2>')
    drift_rows = 0
    if live is None:
        page.note("no drift figures: no store to read the logged inputs from")
    elif live.drift is None:
        page.note(f"no drift figures {where}: {live.drift_error}")
    else:
        drift_rows = _drift(page, live.drift, where)
    page.add("</section>")
    return (0 if live is None else len(live.rows)), drift_rows


def _live_error(
    page: _Page, live: _Live, where: str, days: float, spec: FeatureSpec, unit: str
) -> None:
    if not live.rows:
        page.note(
            f"no feedback yet {where} in {live.store_url} over the last {days:g} days: this "
            "section fills once actual times arrive (POST /v1/feedback or "
            "`intellilog feedback import FILE`)"
        )
        return
    per = spec.goal.minutes
    eta = np.array([r.eta for r in live.rows]) / per
    y = np.array([r.actual for r in live.rows]) / per
    lo = np.array([r.p10 for r in live.rows]) / per
    hi = np.array([r.p90 for r in live.rows]) / per
    done = np.array([r.completed_at for r in live.rows])
    tol = spec.goal.tolerance
    tot = {**point_metrics(y, eta, tol), **interval_metrics(y, lo, hi)}
    page.add(
        f'<p class="summary"><span class="live-count">{len(y)}</span> predictions with '
        f"feedback {_e(where)}, completed {_e(_day(float(done.min())))} .. "
        f"{_e(_day(float(done.max())))} (UTC days, predictions of the last {days:g} days): "
        f"MAE {_f(tot['mae'])} {_e(unit)}, within ±{tol:g} {_e(unit)} {_pct(tot['accuracy'])}, "
        f"coverage {_pct(tot['coverage'])}.</p>"
    )
    day0 = np.floor_divide(done, 86_400).astype(np.int64)
    first = int(day0.min())
    key = day0 - first
    n_days = int(key.max()) + 1
    labels = [_day((first + i) * 86_400.0) for i in range(n_days)]
    groups = _by_group(key, labels, y, eta, lo, hi)
    fig = _new_figure(7.5, 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    ax2 = ax.twinx()
    ax2.bar(x, [g.rows for g in groups], color=_GREY, alpha=0.45, width=0.8, label="rows")
    ax2.set_ylabel("predictions with feedback")
    ax.plot(x, [g.mae for g in groups], "o-", color=_BLUE, ms=4, label="MAE")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_ylabel(f"MAE ({unit})")
    ax.set_ylim(bottom=0)
    step = max(1, math.ceil(len(groups) / 15))
    ax.set_xticks(x[::step], [g.label[5:] for g in groups][::step], rotation=30, fontsize=8)
    ax.set_xlabel("day of completion (UTC, month-day)")
    ax.set_title("Live error per day", fontsize=11)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncol=2, frameon=False)
    page.figure(
        fig, "daily live MAE and count", "Line: daily MAE; bars: predictions with feedback."
    )
    page.add(
        _table(
            ["day (UTC)", "rows", f"MAE ({unit})", f"bias ({unit})", "coverage"],
            _group_rows(groups),
        )
    )


def _drift(page: _Page, snap: Any, where: str) -> int:
    if snap.rows == 0:
        page.note(f"no logged predictions {where} in the last {_span(snap.window_s)}")
        return 0
    feats = sorted(snap.features, key=lambda f: (f.skipped is not None, -f.psi))
    page.add(
        f"<p>{snap.rows} logged rows {_e(where)} in the last {_span(snap.window_s)}: "
        f"verdict <b>{_e(snap.verdict)}</b>"
        + (f" ({_e(', '.join(snap.drifted))})" if snap.drifted else "")
        + f", score {snap.score:.3f} (largest flagged PSI; the alert fires above 0.3).</p>"
    )
    fig = _new_figure(7.5, max(2.8, 0.27 * len(feats) + 1.2))
    ax = fig.add_subplot()
    pos = np.arange(len(feats))
    colors = [_RED if f.flagged else (_GREY if f.skipped else _BLUE) for f in feats]
    ax.barh(pos, [f.psi for f in feats], color=colors)
    crit = [(i, f.critical) for i, f in enumerate(feats) if f.critical is not None]
    if crit:
        xs, ys = [c for _, c in crit], [i for i, _ in crit]
        ax.plot(xs, ys, "|", color="black", ms=12, mew=2, label="critical value")
    ax.axvline(0.3, color=_RED, ls="--", lw=1, label="alert (0.3)")
    ax.set_yticks(pos, [f.name + (" (skipped)" if f.skipped else "") for f in feats], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("PSI against the training reference")
    ax.set_title("Drift per feature", fontsize=11)
    fig.legend(fontsize=8, loc="outside lower center", ncol=2, frameon=False)
    ax.grid(alpha=0.3, axis="x")
    page.figure(
        fig,
        "PSI per feature",
        "Red: flagged by the drift rule; grey: left out (calendar features need whole cycles); "
        "ticks: each feature's critical value.",
    )

    def status(f: Any) -> str:
        if f.flagged:
            return "DRIFT"
        if f.skipped:
            return f"skipped: {f.skipped}"
        return "ok" if f.critical is not None else "no verdict"

    page.add(
        _table(
            ["feature", "kind", "PSI", "critical", "status"],
            [[f.name, f.kind, _f(f.psi, 3), _f(f.critical, 3), status(f)] for f in feats],
        )
    )
    for n in snap.notes:
        page.add(f'<p class="note">{_e(n)}</p>')
    return int(snap.rows)


# ---- the page ----------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:60rem;
margin:2rem auto;padding:0 1rem;color:#1f2933;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #d9e2ec;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #d9e2ec;padding:.2rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}table.kv th{background:#f0f4f8}
thead th{background:#f0f4f8}figure{margin:1rem 0}img{max-width:100%;height:auto}
figcaption{font-size:.8rem;color:#52606d}.note{background:#fff8e1;border-left:4px solid
#e0b000;padding:.4rem .7rem}footer{margin-top:3rem;font-size:.8rem;color:#7b8794}
"""


def build_report(
    registry: Registry,
    ref: str = "production",
    *,
    data: str | Path | None = None,
    database_url: str | None = None,
    tenant: str = "default",
    days: float = DEFAULT_LIVE_DAYS,
    drift_window_s: float = 86_400.0,
    cycles: dict[str, float] | None = None,
    now: float | None = None,
) -> tuple[str, ReportResult]:
    """The report page of ``ref`` (alias or version) as HTML text, and what it holds
    (``path`` of the result is empty: :func:`make_report` writes it).

    Raises ModelLoadError for an unknown or corrupted version, DataError for an unreadable
    data file; store failures become a note in the page.
    """
    if not (math.isfinite(days) and days > 0):
        raise ConfigError(f"days={days!r}: must be > 0")
    now = time.time() if now is None else float(now)
    version = registry.resolve(ref)
    manifest = registry.verify(version)
    spec = model_spec(manifest, version)
    unit = _UNIT_SHORT.get(spec.goal.unit, spec.goal.unit)
    page = _Page()
    _header(page, version, manifest, spec)
    _holdout(page, manifest, unit)
    data_rows = None
    if data is not None:
        # load_model's default engine (the server's), on the CPU: a report is not in a hurry
        model = load_model(registry, version, threads=0, allow_gpu=False)
        data_rows = _data_sections(page, model, Path(data), manifest, unit)
    else:
        page.add('<section id="data"><h2>On the data file</h2>')
        page.note(
            "no data file given: pass --data FILE (labelled rows of the spec's columns, e.g. "
            "the holdout or a later period) for predicted-vs-actual, interval calibration and "
            "the error by hour, weekday and category"
        )
        page.add("</section>")
    live_rows, drift_rows = _live_sections(
        page, version, manifest, spec, database_url, tenant, days, drift_window_s, cycles, now
    )
    from training import __version__

    title = f"Model {version} ({spec.name}) report"
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        + "\n".join(page.parts)
        + f"<footer>generated {_e(datetime.fromtimestamp(now, UTC).isoformat(timespec='seconds'))}"
        f" by intellilog {_e(__version__)}</footer></body></html>\n"
    )
    return doc, ReportResult(
        path=Path(),
        version=version,
        bytes=len(doc.encode("utf-8")),
        images=page.images,
        data_rows=data_rows,
        live_rows=live_rows,
        drift_rows=drift_rows,
        notes=tuple(page.notes),
    )


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file in ``path``'s folder, then rename it into place
    (:func:`training.atomic.write_text_atomic`): a reader sees the old file or the whole
    new one, never a part. The folder must exist."""
    write_text_atomic(path, text)


def default_report_path(version: str) -> Path:
    return Path(f"report-{version}.html")


def make_report(
    registry: Registry,
    ref: str = "production",
    out: str | Path | None = None,
    **kw: Any,
) -> ReportResult:
    """:func:`build_report`, written atomically to ``out`` (default ``report-VERSION.html``
    in the working folder)."""
    doc, res = build_report(registry, ref, **kw)
    path = Path(out) if out is not None else default_report_path(res.version)
    write_atomic(path, doc)
    return replace(res, path=path)
