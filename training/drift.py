r"""Drift statistics: reference histograms for the model manifest, PSI and KS for monitoring.

At training time :func:`reference_histograms` summarises every feature of the
training matrix in a small JSON-serialisable dict (stored in the model
manifest). In production :func:`drift_report` compares a window of served
feature rows against it.

Population stability index (PSI) of one feature, over bins :math:`i` (the value
bins plus one bin for NaN)::

    PSI = sum_i (a_i - r_i) * ln(a_i / r_i)

where :math:`r_i` and :math:`a_i` are the reference and actual (new) shares of
rows in bin :math:`i`, each smoothed as ``s' = (s + eps) / (1 + B * eps)``
(``eps = 1e-4``, ``B`` bins) so that an empty bin gives a large but finite
term instead of ``inf``. Every term is >= 0, so PSI >= 0, and PSI = 0 when the
shares are equal. Usual reading: < 0.1 stable, 0.1-0.2 moderate shift,
> 0.2 significant drift.

Bins of a numeric feature (``"edges"`` ``e_0 < e_1 < ... < e_k``, all finite):
``(-inf, e_0), [e_0, e_1), ..., [e_k, +inf)`` plus NaN; values outside the
training range land in the outer bins, +-inf included. The edges are the inner
quantiles of the finite training values (levels ``1/bins .. (bins-1)/bins``,
duplicates dropped); a value holding at least ``1/bins`` of the rows (a point
mass, e.g. many zeros) gets a bin of its own (``[v, nextafter(v))``). A feature
with at most ``bins`` distinct values is treated as discrete: every value gets
its own bin, with bins for values below, between and above them.

Bins of a categorical feature: one per code seen in training, one for any other
code, one for NaN.

The KS test compares the new finite values with the reference CDF rebuilt from
``cdf_x``/``cdf_p``: the exact step CDF of a feature with at most 256 distinct
values, otherwise ~115 quantiles (every 1 %, denser in the tails) plus exact
jumps at point masses, linear in between. Its p-value uses the two-sample
distribution at the effective size ``en = n*m/(n+m)`` like scipy's
``ks_2samp`` (``kstwo`` up to ``en = 10 000``, Kolmogorov's limit ``kstwobign``
beyond). With a continuous feature the reference CDF is approximate (about
1e-4 in the tails, less in the middle), so at very large windows the p-value is
indicative only; the flags use PSI alone.

The drift rule (:func:`drift_rule`)
-----------------------------------
A window of ``n`` rows gets a verdict only when ``n >= min_rows`` (500 by default);
below that every feature's ``critical`` is None and the verdict is
``"insufficient data"`` (never an alarm). Otherwise a compared feature is
*flagged* when::

    PSI > c = max(floor, chi2.isf(alpha / k, df) / n_eff)
    n_eff = n * m / (n + m)        (m = the reference's rows, entry["n"])
    df    = max(1, B+ - 1)         (B+ = bins with a reference share > 0)

``alpha = 0.05`` is the family-wise false-alarm rate, split Bonferroni-style
over the ``k`` features compared (a test per feature at ``alpha / k``);
``floor = 0.1`` is the practical floor, the classic "stable" bound, so a huge
window does not flag a negligible shift: the same process does not give the same
shares twice (on generated deliveries the weather of two 26-week periods differs
by PSI 0.02 on average, up to 0.07; a 0.02 floor flags a third of fresh 10k-row
windows, 0.05 a few per cent, 0.1 none). Above ~250 rows the floor is the
binding term for up to ~10 bins; the chi-square term rules small windows and
many-bin features. The 500-row minimum is where the rule holds its false-alarm
rate on fresh windows: with 3-4 % reference bins (fog, the rarest zone) fewer rows
leave bins nearly empty, the eps-smoothed log terms dominate, ``n * PSI`` is no
longer chi-square, and fresh 150-200-row windows were flagged 9-13 % of the time
(bench/drift_speed.py). Why chi-square: for shares ``a = r (1 + d)`` close to the
reference, each PSI term is ``r d ln(1 + d) = r d^2 + O(d^3)``, so PSI is
Pearson's ``sum (a - r)^2 / r`` to second order, and ``n * PSI`` of ``n``
independent rows drawn from the reference shares tends to chi-square with
``B+ - 1`` degrees of freedom (bins the reference never saw cannot be hit under
no drift). When the reference is itself a sample of ``m`` rows, the variance of
``a - r`` is ``r (1 - r) (1/n + 1/m)``: hence ``n_eff``.

The model score is the largest PSI among flagged features, 0 when none is
flagged (or there are too few rows)::

    score = max({PSI_f : f flagged} | {0})

Because ``c <= 0.3`` whenever ``chi2.isf(alpha / k, df) <= 0.3 * n_eff`` (true
for ``n >= 500`` rows, a 10^5-row reference, 19 features and up to about 100
bins), ``score > 0.3`` reads: the window has at least ``min_rows`` rows and some
compared feature's PSI against the training reference exceeds 0.3 -- beyond the
0.2 "significant" convention -- and the shift is statistically real at
family-wise level ``alpha``.

Calendar features (:data:`CALENDAR_CYCLES`: hour, day of week, weekend, day of
year) describe *where the window lies* in a cycle, not the traffic: a 3-hour
window always has a different hour distribution from a year of training data.
:func:`calendar_skips` leaves such a feature out of the rule unless the window's
span ``T`` covers whole cycles closely enough: with ``x = T / cycle`` and
``f = x - floor(x)``, the share of the over-counted part of the cycle biases PSI
by about ``f (1 - f) / x^2`` (uniform traffic), and the feature is compared only
when that is at most ``floor / 4`` (so a 24 h window compares the hour of day,
36 h does not; day of week needs about 7 days, day of year about a year).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from kernels.errors import ConfigError, DataError, ModelLoadError
from kernels.spec import TIME_FEATURE_COLUMNS

__all__ = [
    "ALPHA",
    "CALENDAR_CYCLES",
    "EPS",
    "MIN_ROWS",
    "PSI_DRIFT",
    "PSI_FLOOR",
    "PSI_MODERATE",
    "VERDICTS",
    "bin_counts",
    "calendar_skips",
    "critical_psi",
    "drift_report",
    "drift_rule",
    "drift_rule_counts",
    "psi",
    "psi_flag",
    "reference_histograms",
]

#: Smoothing added to every bin share before the PSI logarithm.
EPS = 1e-4
#: PSI above this is flagged "drift".
PSI_DRIFT = 0.2
#: PSI at or above this (and not above :data:`PSI_DRIFT`) is flagged "moderate".
PSI_MODERATE = 0.1

#: Features with at most this many distinct values store their exact CDF.
_EXACT_CDF_MAX = 256
#: Quantile levels of the stored reference CDF: every 1 %, denser in both tails.
_TAIL = np.array([0.0, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7e-3])
_CDF_LEVELS = np.unique(np.concatenate([_TAIL, np.linspace(0.01, 0.99, 99), 1.0 - _TAIL]))
_FLAG_ORDER = {"ok": 0, "moderate": 1, "drift": 2}

#: Family-wise false-alarm rate of :func:`drift_rule` (Bonferroni over the features).
ALPHA = 0.05
#: No verdict on a window with fewer rows than this.
MIN_ROWS = 500
#: The critical PSI never goes below this: smaller shifts are not worth an alarm.
PSI_FLOOR = 0.1
#: The verdicts of :func:`drift_rule`.
VERDICTS = ("insufficient data", "ok", "drift")
_DAY = 86_400.0
_CYCLE_OF = {
    "hour": _DAY,
    "day_of_week": 7 * _DAY,
    "weekend": 7 * _DAY,
    "day_of_year": 365.2425 * _DAY,
}
#: Feature columns set by the calendar, with the cycle (seconds) a window must cover
#: before they are compared (:func:`calendar_skips`).
CALENDAR_CYCLES: dict[str, float] = {
    col: _CYCLE_OF[f] for f, cols in TIME_FEATURE_COLUMNS.items() for col in cols
}


def _as_matrix(X: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """``X`` as a 2-D float64 array with one column per name."""
    try:
        A = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"feature matrix is not numeric ({e}): encode categoricals as codes") from e
    if A.ndim != 2:
        raise DataError(f"feature matrix must be 2-D (rows x features), got shape {A.shape}")
    if A.shape[1] != len(names):
        raise DataError(
            f"feature matrix has {A.shape[1]} columns but {len(names)} names were given: "
            "pass one name per column, in column order"
        )
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if list(names).count(n) > 1})
        raise DataError(f"duplicate feature names {dup}: every column needs its own name")
    if A.shape[0] == 0:
        raise DataError("feature matrix has no rows: drift statistics need at least one row")
    return A


def _as_vector(values: np.ndarray) -> np.ndarray:
    """``values`` as a 1-D float64 array with at least one element."""
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"feature values are not numeric ({e})") from e
    if v.ndim != 1:
        raise DataError(f"pass one feature's values as a 1-D array, got shape {v.shape}")
    if v.size == 0:
        raise DataError("no values to compare with the reference: pass at least one row")
    return v


def _sorted_quantiles(s: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Quantiles of the sorted array ``s`` (numpy's default "linear" method)."""
    pos = levels * (s.size - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, s.size - 1)
    f = pos - lo
    a, b = s[lo], s[hi]
    return np.where(a == b, a, a * (1.0 - f) + b * f)  # no overflow, exact on ties


def _numeric_entry(col: np.ndarray, bins: int) -> dict[str, Any]:
    """Reference entry of one numeric column (see the module docstring)."""
    n = col.size
    nan = np.isnan(col)
    s = np.sort(col[np.isfinite(col)])
    m = s.size
    edges = np.empty(0)
    cdf_x = cdf_p = np.empty(0)
    if m:
        first = np.empty(m, dtype=bool)
        first[0] = True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        uniq = s[starts]
        counts = np.diff(np.append(starts, m))
        cum = np.cumsum(counts) / m
        if uniq.size <= bins:  # discrete: every value its own bin
            cuts = np.concatenate([uniq, np.nextafter(uniq, np.inf)])
        else:
            atoms = uniq[counts >= m / bins]
            cuts = np.concatenate(
                [
                    _sorted_quantiles(s, np.arange(1, bins) / bins),
                    atoms,
                    np.nextafter(atoms, np.inf),
                ]
            )
        edges = np.unique(cuts[np.isfinite(cuts)])
        if uniq.size <= _EXACT_CDF_MAX:  # exact step CDF: (u, F(u-)), (u, F(u)) per value
            cdf_x = np.repeat(uniq, 2)
            cdf_p = np.column_stack([cum - counts / m, cum]).reshape(-1)
        else:  # quantiles, denser in the tails, plus exact jumps at point masses
            qx = _sorted_quantiles(s, _CDF_LEVELS)
            heavy = np.flatnonzero(counts >= m / len(_CDF_LEVELS))
            jump_x, jump_hi = uniq[heavy], cum[heavy]
            jump_lo = jump_hi - counts[heavy] / m
            keep = ~np.isin(qx, jump_x)
            cdf_x = np.concatenate([qx[keep], np.repeat(jump_x, 2)])
            cdf_p = np.concatenate(
                [_CDF_LEVELS[keep], np.column_stack([jump_lo, jump_hi]).reshape(-1)]
            )
            order = np.lexsort((cdf_p, cdf_x))
            cdf_x, cdf_p = cdf_x[order], np.maximum.accumulate(cdf_p[order])
    counts_b = np.bincount(
        np.searchsorted(edges, col[~nan], side="right"), minlength=edges.size + 1
    )
    return {
        "kind": "numeric",
        "n": int(n),
        "n_finite": int(m),
        "nan_share": float(nan.sum() / n),
        "edges": [float(e) for e in edges],
        "shares": [float(c / n) for c in counts_b],
        "cdf_x": [float(x) for x in cdf_x],
        "cdf_p": [float(p) for p in cdf_p],
    }


def _code(c: float) -> int | float:
    """A category code as an int when it is integral (JSON stays tidy)."""
    return int(c) if float(c).is_integer() else float(c)


def _categorical_entry(col: np.ndarray) -> dict[str, Any]:
    """Reference entry of one categorical column: share per code, NaN share."""
    n = col.size
    nan = np.isnan(col)
    codes, counts = np.unique(col[~nan], return_counts=True)
    return {
        "kind": "categorical",
        "n": int(n),
        "nan_share": float(nan.sum() / n),
        "codes": [_code(c) for c in codes],
        "shares": [float(c / n) for c in counts],
    }


def reference_histograms(
    X: np.ndarray,
    names: Sequence[str],
    bins: int = 10,
    categorical: Sequence[int] = (),
) -> dict[str, dict[str, Any]]:
    """Per-feature reference distribution of a training matrix, for the manifest.

    Returns ``{name: entry}``; every entry is plain JSON (lists, floats, ints, str)
    with ``kind``, ``n`` (rows), ``nan_share`` and ``shares`` (shares of *all* rows,
    so ``sum(shares) + nan_share == 1``). Numeric entries add ``edges`` (finite,
    strictly increasing bin cuts; ``len(shares) == len(edges) + 1``), ``n_finite``
    and ``cdf_x``/``cdf_p`` (reference CDF for the KS test); categorical entries
    (column indices in ``categorical``) add ``codes`` (one share per code).
    """
    A = _as_matrix(X, names)
    if not isinstance(bins, int | np.integer) or bins < 2:
        raise ConfigError(f"bins must be an integer >= 2, got {bins!r}")
    cat = set()
    for j in categorical:
        if not 0 <= int(j) < A.shape[1]:
            raise ConfigError(
                f"categorical column index {j} is out of range for {A.shape[1]} features: "
                "pass 0-based column indices"
            )
        cat.add(int(j))
    return {
        str(name): _categorical_entry(A[:, j]) if j in cat else _numeric_entry(A[:, j], int(bins))
        for j, name in enumerate(names)
    }


def _entry_field(reference: Mapping[str, Any], key: str) -> Any:
    """``reference[key]`` or a ModelLoadError explaining what a reference entry is."""
    try:
        return reference[key]
    except (KeyError, TypeError):
        raise ModelLoadError(
            f"reference histogram entry has no {key!r}: pass one feature's entry, "
            "i.e. reference_histograms(...)[name] (stored in the model manifest)"
        ) from None


def _reference_bins(reference: Mapping[str, Any]) -> tuple[str, np.ndarray, np.ndarray]:
    """``(kind, cuts, reference shares)`` of an entry: ``cuts`` are the numeric edges or
    the sorted categorical codes; shares are per bin, the "other code" bin (categorical)
    and the NaN bin last."""
    kind = _entry_field(reference, "kind")
    if kind == "numeric":
        cuts = np.asarray(_entry_field(reference, "edges"), dtype=np.float64)
        ref = np.asarray(_entry_field(reference, "shares"), dtype=np.float64)
        if ref.size != cuts.size + 1:
            raise ModelLoadError(
                f"reference histogram entry is inconsistent: {cuts.size} edges but "
                f"{ref.size} shares (expected {cuts.size + 1}); rebuild it with "
                "reference_histograms()"
            )
    elif kind == "categorical":
        codes = np.asarray(_entry_field(reference, "codes"), dtype=np.float64)
        ref = np.asarray(_entry_field(reference, "shares"), dtype=np.float64)
        if ref.size != codes.size:
            raise ModelLoadError(
                f"reference histogram entry is inconsistent: {codes.size} codes but "
                f"{ref.size} shares; rebuild it with reference_histograms()"
            )
        order = np.argsort(codes)
        cuts, ref = codes[order], np.append(ref[order], 0.0)
    else:
        raise ModelLoadError(
            f"reference histogram entry has unknown kind {kind!r} (expected 'numeric' or "
            "'categorical'); rebuild it with reference_histograms()"
        )
    return kind, cuts, np.append(ref, float(_entry_field(reference, "nan_share")))


def _counts(kind: str, cuts: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rows of ``v`` per bin of :func:`_reference_bins` (int64, NaN bin last)."""
    nan = np.isnan(v)
    rest = v[~nan]
    if kind == "numeric":
        counts = np.bincount(np.searchsorted(cuts, rest, side="right"), minlength=cuts.size + 1)
    else:
        pos = np.searchsorted(cuts, rest)
        hit = pos < cuts.size
        hit[hit] = cuts[pos[hit]] == rest[hit]
        idx = np.where(hit, pos, cuts.size)  # codes never seen in training: "other" bin
        counts = np.bincount(idx, minlength=cuts.size + 1)
    return np.append(counts, np.count_nonzero(nan)).astype(np.int64)


def _bin_shares(reference: Mapping[str, Any], v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reference shares, new shares) over the same bins, NaN bin last."""
    kind, cuts, ref = _reference_bins(reference)
    return ref, _counts(kind, cuts, v) / v.size


def _psi_shares(ref: np.ndarray, new: np.ndarray) -> float:
    """PSI of two share vectors over the same bins, eps-smoothed (module docstring)."""
    k = ref.size
    r = (ref + EPS) / (ref.sum() + k * EPS)
    a = (new + EPS) / (new.sum() + k * EPS)
    return float(max(0.0, np.sum((a - r) * np.log(a / r))))


def bin_counts(reference: Mapping[str, Any], values: np.ndarray) -> np.ndarray:
    """Rows of ``values`` in each bin of one feature's reference entry (NaN bin last).

    Counts of successive windows add up, so a monitor can keep counts per time slice
    and judge any union of slices with :func:`drift_rule_counts`. An empty ``values``
    gives zeros.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    kind, cuts, _ = _reference_bins(reference)
    return _counts(kind, cuts, v)


def psi(reference: Mapping[str, Any], values: np.ndarray) -> float:
    """Population stability index of one feature's new ``values`` vs its reference entry.

    ``reference`` is ``reference_histograms(...)[name]``. NaN is a bin of its own;
    shares are eps-smoothed (see the module docstring), so the result is finite,
    >= 0, and 0 for values distributed exactly like the reference.
    """
    v = _as_vector(values)
    return _psi_shares(*_bin_shares(reference, v))


def psi_flag(value: float) -> str:
    """``"drift"`` above 0.2, ``"moderate"`` from 0.1 to 0.2, else ``"ok"``."""
    if value > PSI_DRIFT:
        return "drift"
    if value >= PSI_MODERATE:
        return "moderate"
    return "ok"


def _ref_cdf(x: np.ndarray, px: np.ndarray, pp: np.ndarray, right: bool) -> np.ndarray:
    """Reference CDF at ``x`` (right-continuous value, or left limit if not ``right``).

    ``(px, pp)`` are points of a non-decreasing CDF, linear between points; equal
    ``px`` entries mark a jump.
    """
    idx = np.searchsorted(px, x, side="right" if right else "left")
    out = np.empty(x.size)
    below, above = idx == 0, idx >= px.size
    out[below] = 0.0
    out[above] = 1.0
    mid = ~(below | above)
    i, j = idx[mid] - 1, idx[mid]
    span = px[j] - px[i]
    frac = np.where(span > 0, (x[mid] - px[i]) / np.where(span > 0, span, 1.0), 1.0)
    out[mid] = pp[i] + frac * (pp[j] - pp[i])
    return out


def _ks_pvalue(reference: Mapping[str, Any], v: np.ndarray) -> float | None:
    """KS p-value of the finite ``v`` against the reference CDF; None if either is empty."""
    px = np.asarray(reference.get("cdf_x", []), dtype=np.float64)
    pp = np.asarray(reference.get("cdf_p", []), dtype=np.float64)
    m = int(reference.get("n_finite", 0))
    s = np.sort(v[np.isfinite(v)])
    n = s.size
    if n == 0 or m == 0 or px.size == 0 or px.size != pp.size:
        return None
    u = np.union1d(s, px)
    d_right = np.abs(np.searchsorted(s, u, side="right") / n - _ref_cdf(u, px, pp, True))
    d_left = np.abs(np.searchsorted(s, u, side="left") / n - _ref_cdf(u, px, pp, False))
    d = float(max(d_right.max(), d_left.max()))
    en = n * m / (n + m)
    # exact finite-n distribution while cheap; Kolmogorov's limit (rel. error < 1%) beyond
    p = float(
        stats.kstwo.sf(d, max(1, round(en)))
        if en <= 10_000
        else stats.kstwobign.sf(d * math.sqrt(en))
    )
    return min(1.0, max(0.0, p)) if math.isfinite(p) else None


def drift_report(
    reference: Mapping[str, Mapping[str, Any]], X: np.ndarray, names: Sequence[str]
) -> dict[str, Any]:
    """Compare a window of feature rows with the training reference.

    ``reference`` is the output of :func:`reference_histograms`; ``X`` has one
    column per name, and every name must have a reference entry. Returns (plain
    JSON; ``ks_pvalue`` is None for categorical features or when there are no
    finite values)::

        {"n_rows": 500,
         "features": {name: {"kind", "psi", "ks_pvalue", "flag",
                             "nan_share": {"reference", "current"}}},
         "overall": {"flag", "max_psi", "drift": [names], "moderate": [names]}}

    Flags come from PSI alone: ``"drift"`` > 0.2 >= ``"moderate"`` >= 0.1 > ``"ok"``;
    the overall flag is the worst feature flag.
    """
    A = _as_matrix(X, names)
    missing = [n for n in names if n not in reference]
    if missing:
        raise DataError(
            f"features {missing} have no reference histogram (reference has "
            f"{sorted(reference)}): drop those columns or retrain so the manifest covers them"
        )
    features: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        entry = reference[name]
        col = A[:, j]
        value = psi(entry, col)
        kind = entry.get("kind")
        features[str(name)] = {
            "kind": kind,
            "psi": value,
            "ks_pvalue": _ks_pvalue(entry, col) if kind == "numeric" else None,
            "flag": psi_flag(value),
            "nan_share": {
                "reference": float(entry.get("nan_share", 0.0)),
                "current": float(np.isnan(col).sum() / col.size),
            },
        }
    flags = [f["flag"] for f in features.values()]
    return {
        "n_rows": int(A.shape[0]),
        "features": features,
        "overall": {
            "flag": max(flags, key=_FLAG_ORDER.__getitem__, default="ok"),
            "max_psi": max((f["psi"] for f in features.values()), default=0.0),
            "drift": [n for n, f in features.items() if f["flag"] == "drift"],
            "moderate": [n for n, f in features.items() if f["flag"] == "moderate"],
        },
    }


def critical_psi(
    n: int,
    df: int,
    *,
    tests: int = 1,
    alpha: float = ALPHA,
    floor: float = PSI_FLOOR,
    reference_rows: int | None = None,
) -> float:
    """The PSI a window of ``n`` rows must exceed to be flagged (module docstring)::

        max(floor, chi2.isf(alpha / tests, df) / n_eff),  n_eff = n m / (n + m)

    with ``m = reference_rows`` (``n_eff = n`` when None: reference shares taken as
    exact). ``df`` is the number of reference bins with a share > 0, minus one.
    """
    if n < 1:
        raise DataError(f"a critical PSI needs at least one row, got n={n}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be within (0, 1), got {alpha!r}")
    if tests < 1 or df < 1:
        raise ConfigError(f"tests and df must be >= 1, got tests={tests}, df={df}")
    if not floor >= 0.0:
        raise ConfigError(f"floor must be >= 0, got {floor!r}")
    n_eff = float(n) if not reference_rows else n * reference_rows / (n + reference_rows)
    return max(float(floor), float(stats.chi2.isf(alpha / tests, df)) / n_eff)


def _duration(seconds: float) -> str:
    """``36 h``, ``7 d``, ``90 min`` (for reasons shown to operators)."""
    if seconds >= 2 * _DAY and seconds % _DAY == 0:
        return f"{seconds / _DAY:g} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min"


def calendar_skips(
    names: Sequence[str],
    covered_s: float | None,
    *,
    cycles: Mapping[str, float] | None = None,
    floor: float = PSI_FLOOR,
) -> dict[str, str]:
    """Calendar features of ``names`` the rule must leave out, with the reason.

    ``covered_s`` is the time span the window's rows cover (None: unknown, e.g. a read
    cut at its row limit: every calendar feature is left out). A feature with cycle
    ``C`` (:data:`CALENDAR_CYCLES`, plus ``cycles``: other features that follow a
    calendar, e.g. a seasonal ``weather``, name -> seconds) is compared when
    ``x = covered_s / C`` has ``f (1 - f) / x^2 <= floor / 4`` (``f`` the fractional
    part of ``x``): the window covers whole cycles closely enough that the partly
    covered cycle cannot move PSI by more than a quarter of the floor.
    """
    every = {**CALENDAR_CYCLES, **(cycles or {})}
    out: dict[str, str] = {}
    for name in names:
        cycle = every.get(name)
        if cycle is None:
            continue
        if covered_s is None:
            out[name] = "time span of the rows unknown (the read hit its row limit)"
            continue
        x = max(float(covered_s), 0.0) / cycle
        f = x - math.floor(x)
        if x <= 0.0 or f * (1.0 - f) / (x * x) > floor / 4.0:
            out[name] = (
                f"the window covers {_duration(max(float(covered_s), 0.0))}, not whole "
                f"{_duration(cycle)} cycles"
            )
    return out


def drift_rule(
    reference: Mapping[str, Mapping[str, Any]],
    X: np.ndarray,
    names: Sequence[str],
    *,
    alpha: float = ALPHA,
    min_rows: int = MIN_ROWS,
    floor: float = PSI_FLOOR,
    skip: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The drift decision on a window of feature rows (one column per name).

    :func:`drift_rule_counts` over :func:`bin_counts` of every column; an empty
    window is allowed (verdict ``"insufficient data"``).
    """
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != len(names):
        raise DataError(
            f"feature matrix has shape {A.shape} but {len(names)} names were given: "
            "pass one name per column, in column order"
        )
    _check_names(reference, names)
    counts = {str(n): bin_counts(reference[n], A[:, j]) for j, n in enumerate(names)}
    return drift_rule_counts(
        reference, counts, alpha=alpha, min_rows=min_rows, floor=floor, skip=skip
    )


def _check_names(reference: Mapping[str, Any], names: Sequence[str]) -> None:
    missing = [n for n in names if n not in reference]
    if missing:
        raise DataError(
            f"features {missing} have no reference histogram (reference has "
            f"{sorted(reference)}): drop those columns or retrain so the manifest covers them"
        )


def drift_rule_counts(
    reference: Mapping[str, Mapping[str, Any]],
    counts: Mapping[str, np.ndarray],
    *,
    alpha: float = ALPHA,
    min_rows: int = MIN_ROWS,
    floor: float = PSI_FLOOR,
    skip: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The drift decision from per-feature bin counts (:func:`bin_counts`).

    Every feature of ``counts`` must have the same total (the window's rows) and a
    reference entry. Features named in ``skip`` (name -> reason, e.g.
    :func:`calendar_skips`) get their PSI but are neither tested nor counted in the
    Bonferroni split. Returns plain JSON::

        {"n_rows": 2000, "verdict": "insufficient data" | "ok" | "drift",
         "score": 0.41, "drifted": [names, largest PSI first], "tests": 17,
         "alpha": 0.05, "floor": 0.1, "min_rows": 500,
         "features": {name: {"kind", "psi", "critical", "df", "flagged", "skipped"}}}

    ``critical`` is None when the feature was skipped or the window has fewer than
    ``min_rows`` rows; ``score`` is the largest flagged PSI (0 when none).
    """
    if not isinstance(min_rows, int | np.integer) or min_rows < 1:
        raise ConfigError(f"min_rows must be an integer >= 1, got {min_rows!r}")
    _check_names(reference, list(counts))
    skip = dict(skip or {})
    totals = {int(np.asarray(c).sum()) for c in counts.values()}
    if len(totals) > 1:
        raise DataError(
            f"bin counts of one window must have one total, got {sorted(totals)}: count "
            "every feature over the same rows"
        )
    n = totals.pop() if totals else 0
    judged = n >= min_rows
    tests = max(1, sum(1 for name in counts if name not in skip))
    features: dict[str, dict[str, Any]] = {}
    for name, c in counts.items():
        entry = reference[name]
        kind, _, ref = _reference_bins(entry)
        c = np.asarray(c, dtype=np.float64)
        if c.size != ref.size:
            raise DataError(
                f"{name}: {c.size} bin counts for a reference of {ref.size} bins: count "
                "with bin_counts() against this reference"
            )
        df = max(1, int(np.count_nonzero(ref > 0)) - 1)
        value = _psi_shares(ref, c / n) if n else 0.0
        reason = skip.get(name)
        critical = None
        if judged and reason is None:
            m = int(entry.get("n", 0)) or None
            critical = critical_psi(n, df, tests=tests, alpha=alpha, floor=floor, reference_rows=m)
        features[str(name)] = {
            "kind": kind,
            "psi": value,
            "critical": critical,
            "df": df,
            "flagged": critical is not None and value > critical,
            "skipped": reason,
        }
    drifted = sorted(
        (k for k, f in features.items() if f["flagged"]), key=lambda k: -features[k]["psi"]
    )
    verdict = VERDICTS[(2 if drifted else 1) if judged else 0]
    return {
        "n_rows": n,
        "verdict": verdict,
        "score": features[drifted[0]]["psi"] if drifted else 0.0,
        "drifted": drifted,
        "tests": tests,
        "alpha": float(alpha),
        "floor": float(floor),
        "min_rows": int(min_rows),
        "features": features,
    }
