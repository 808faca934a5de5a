r"""Statistics of model experiments: A/B (two independent arms) and shadow (paired).

Every test compares **absolute errors** ``e = |eta - actual|`` (minutes) of a baseline
model version (``b``) and a candidate (``c``); the effect is the difference of the mean
absolute errors ``theta = MAE_c - MAE_b`` (negative: the candidate is better) and the
relative change ``r = MAE_c / MAE_b - 1``.

Two designs
-----------
- **A/B** (``mode="ab"``): each order goes to one arm by a sticky hash, so the arms hold
  different deliveries. Fixed-horizon test: Welch's two-sample t-test
  (``scipy.stats.ttest_ind(equal_var=False)``). It assumes independent rows and a mean
  absolute error that is close to normal by the central limit theorem (absolute errors
  are skewed; a few hundred rows per arm are enough), and it does not assume equal
  variances.
- **Shadow** (``mode="shadow"``): the candidate scores every request too, so row ``i`` of
  both arms is the same delivery and ``d_i = e_c,i - e_b,i`` removes the delivery's own
  difficulty (two models err together on the same order). Paired t-test
  (``scipy.stats.ttest_rel``) on ``d``: assumes independent deliveries and a mean of
  ``d`` close to normal; it tests the **mean** of ``d``, which is exactly
  ``MAE_c - MAE_b``, so it drives the decision. The Wilcoxon signed-rank test on ``d``
  is reported as a check: it makes no normality assumption but assumes ``d`` is
  symmetric about its centre, and it tests the pseudo-median of ``d`` rather than the
  mean; when the two disagree on a fixed-horizon decision the reason says so (skewed
  ``d``, e.g. a candidate that is better on most orders but much worse on a few).

The relative change's confidence interval (level ``1 - alpha``) uses the **delta method**
(not Fieller): for ``R = MAE_c / MAE_b``,
``se(R) = sqrt(var_c / (n_c MAE_b^2) + MAE_c^2 var_b / (n_b MAE_b^4))`` for two arms and
``se(R) = sd(e_c - R e_b) / (sqrt(n) MAE_b)`` for paired rows, with normal quantiles.
It is a fixed-horizon interval, also in sequential mode.

Sequential, always-valid option (mSPRT)
---------------------------------------
The fixed-horizon tests are valid when looked at once. Looking after every batch and
stopping at the first ``p < alpha`` inflates the false-positive rate (to 0.22-0.25 with
20 looks at 0.05, measured in docs/experiments.md). With ``sequential=True`` the decision uses the normal-mixture
sequential probability ratio test of Johari, Pekelis, Koomen & Walsh, "Always valid
inference: continuous monitoring of A/B tests" (Operations Research, 2022). With
``theta_hat_n`` the estimate of ``theta`` after ``n`` rows, ``V_n`` its plug-in variance
(``var_b/n_b + var_c/n_c`` for two arms, ``var(d)/n`` for paired rows) and the mixing
distribution ``theta ~ N(0, tau^2)``::

    Lambda_n = sqrt(V_n / (V_n + tau^2)) * exp(tau^2 theta_hat_n^2 / (2 V_n (V_n + tau^2)))
    p_n      = min(p_{n-1}, 1 / Lambda_n),  p_0 = 1

With a known variance ``Lambda_n`` is a martingale under ``theta = 0``, so by Ville's
inequality ``P(any p_n <= alpha) <= alpha``; with the plug-in variance this holds
approximately once the variance estimate has settled (measured: 0.1-1.7 % at 0.05).
So the caller may look after every batch and stop at any time. :func:`analyze` evaluates ``Lambda`` at **every prefix** of the rows it is given
(the arrays are in arrival order; for two arms the prefixes take the same share of each
arm), starting at ``burn_in`` rows per arm where the plug-in variance has settled, so
the p-value it reports is the running minimum over all the looks anyone could have made
(for shadow data a later call with more rows never reports a larger p-value).

Choice of ``tau``: the prior's standard deviation is the smallest effect worth
detecting, ``tau = mde * MAE_b`` with ``MAE_b`` measured on the first ``burn_in``
baseline rows (fixed once those rows exist, so later calls redo the same computation
on the same prefixes). A smaller ``tau`` detects small effects sooner and large ones
later; matching it to the minimum detectable effect is the paper's advice of fitting the
prior to the effect sizes one expects.

Sample size and the decision rule
---------------------------------
Rows per arm for a two-sided test at ``alpha`` to detect ``delta = mde * MAE_b`` with
probability ``power`` (:func:`min_sample_size`)::

    n_min = max(MIN_ROWS, ceil((z_{1-alpha/2} + z_{power})^2 * S / delta^2))

with ``S = var(e_b) + var(e_c)`` for two arms and ``S = var(d)`` for paired rows (the
observed sample variances). The mSPRT needs more rows for the same power; its planned
size (:func:`sequential_horizon`) is the smallest ``n >= n_min`` at which the last look
alone crosses ``1/alpha`` with probability ``power`` (the earlier looks only add power).
The fixed-horizon plan is ``n_min`` itself.

The recommendation, with ``n = min(n_b, n_c)``, ``p`` the deciding test's p-value
(Welch, paired t, or the always-valid mSPRT p-value when ``sequential``) and ``planned``
the plan above:

1. ``n < n_min``: ``continue_testing`` (the reason says how many rows are missing);
2. ``p < alpha`` and ``MAE_c < MAE_b``: ``promote_to_production``;
3. ``p < alpha`` and ``MAE_c > MAE_b``: ``archive_candidate`` (significantly worse);
4. ``n >= planned`` or ``finished`` (the experiment's duration is over):
   ``archive_candidate`` (no significant improvement with enough data);
5. otherwise ``continue_testing`` (only in sequential mode, between ``n_min`` and
   ``planned``).

Pure numpy/scipy: no I/O. ``docs/experiments.md`` has the measured error rates.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import numpy as np
from numpy.typing import NDArray
from scipy import stats

from training.metrics import interval_metrics, point_metrics

__all__ = [
    "MIN_ROWS",
    "Analysis",
    "ArmData",
    "ArmSummary",
    "Effect",
    "Mode",
    "Plan",
    "Recommendation",
    "SequentialResult",
    "TestResult",
    "analyze",
    "min_sample_size",
    "msprt_p_values",
    "prefix_mean_var",
    "sequential_horizon",
    "summarize_arm",
]

Mode = Literal["ab", "shadow"]
Recommendation = Literal["continue_testing", "promote_to_production", "archive_candidate"]

#: Floor of the minimum sample size and default mSPRT burn-in (rows per arm): below a
#: hundred rows the sample variance behind the plan and the normal approximation of a
#: mean of skewed absolute errors are both too rough to act on.
MIN_ROWS = 100

_FIELDS = ("eta", "p10", "p90", "actual")
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ArmData:
    """One arm's rows in arrival order: predicted ETA, its p10/p90 interval, actual minutes.

    The fields are converted to float64 numpy arrays; :func:`analyze` checks shapes, lengths
    and finiteness and names the bad field. For shadow data both arms have the same length
    and row ``i`` is the same delivery.
    """

    eta: FloatArray
    p10: FloatArray
    p90: FloatArray
    actual: FloatArray

    def __post_init__(self) -> None:
        for name in _FIELDS:
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))

    def __len__(self) -> int:
        return int(self.actual.shape[0]) if self.actual.ndim else 0

    def abs_errors(self) -> FloatArray:
        """``|eta - actual|`` per row (minutes)."""
        return np.abs(self.eta - self.actual)


class ArmSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Quality of one arm; NaN (``null`` in JSON) when the arm has no rows."""

    n: int
    mae: float
    p90_abs_error: float
    accuracy: float  # share of rows with |error| <= tolerance
    coverage: float  # share of rows with p10 <= actual <= p90
    bias: float  # mean(eta - actual): > 0 means the arm predicts late


class TestResult(msgspec.Struct, frozen=True, kw_only=True):
    """One hypothesis test of ``MAE_c == MAE_b``.

    ``statistic``: t for the t-tests and the centred signed-rank sum ``W+ - E[W+]`` for
    Wilcoxon (> 0: the candidate's errors are larger); ``log Lambda`` at the last look for
    the mSPRT (unsigned: read the direction from the effect).
    """

    name: Literal["welch_t", "paired_t", "wilcoxon", "msprt"]
    statistic: float
    p_value: float


class Effect(msgspec.Struct, frozen=True, kw_only=True):
    """The candidate's change in MAE with a delta-method interval of the relative change."""

    mae_difference: float  # MAE_c - MAE_b, minutes
    relative_change: float  # MAE_c / MAE_b - 1
    ci_low: float
    ci_high: float
    ci_level: float
    ci_method: str = "delta"


class SequentialResult(msgspec.Struct, frozen=True, kw_only=True):
    """The mSPRT at the last prefix: always-valid p-value and the mixture it used."""

    p_value: float  # running minimum of 1 / Lambda over every look
    log_lambda: float  # log Lambda at the last look
    tau: float  # mixture standard deviation, minutes (mde * MAE_b on the burn-in rows)
    burn_in: int
    looks: int  # prefixes evaluated


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """How many rows per arm the experiment needs, and how many it has."""

    mde: float
    power: float
    alpha: float
    sd: float  # sqrt(var_b + var_c) for A/B, sd of paired differences for shadow
    effect_minutes: float  # mde * MAE_b
    min_n: int
    planned_n: int  # min_n (fixed horizon) or the mSPRT horizon (sequential)
    n: int  # rows per arm now: min(n_b, n_c)


class Analysis(msgspec.Struct, frozen=True, kw_only=True):
    """Everything :func:`analyze` found, the recommendation and why."""

    mode: Mode
    sequential: bool
    finished: bool
    tolerance: float
    alpha: float
    baseline: ArmSummary
    candidate: ArmSummary
    effect: Effect | None
    tests: tuple[TestResult, ...]
    msprt: SequentialResult | None
    plan: Plan
    decided_by: str  # the test whose p-value the rule used ("" before any test ran)
    recommendation: Recommendation
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins for ``--json`` (NaN stays a float; msgspec's JSON writes ``null``)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    def format_text(self) -> str:
        """A short human-readable report for the CLI."""
        kind = "sequential (mSPRT)" if self.sequential else "fixed horizon"
        lines = [
            f"experiment: {self.mode}, {kind}, alpha {self.alpha:g}, "
            f"accuracy tolerance {self.tolerance:g} min",
            f"{'arm':<10}{'n':>9}{'MAE':>8}{'p90|err|':>10}{'accuracy':>10}"
            f"{'coverage':>10}{'bias':>8}",
        ]
        for name, arm in (("baseline", self.baseline), ("candidate", self.candidate)):
            lines.append(
                f"{name:<10}{arm.n:>9}{arm.mae:>8.3f}{arm.p90_abs_error:>10.3f}"
                f"{arm.accuracy:>10.3f}{arm.coverage:>10.3f}{arm.bias:>8.3f}"
            )
        if self.effect is not None:
            e = self.effect
            lines.append(
                f"effect: MAE {e.mae_difference:+.3f} min ({e.relative_change:+.2%}, "
                f"{e.ci_level:.0%} CI {e.ci_low:+.2%} to {e.ci_high:+.2%}, {e.ci_method} method)"
            )
        if self.tests:
            lines.append(
                "tests: "
                + "; ".join(f"{t.name} {t.statistic:+.3f} p={t.p_value:.4g}" for t in self.tests)
            )
        if self.msprt is not None:
            m = self.msprt
            lines.append(
                f"mSPRT: always-valid p={m.p_value:.4g} over {m.looks} looks "
                f"(tau {m.tau:.3f} min, burn-in {m.burn_in} rows)"
            )
        p = self.plan
        lines.append(
            f"plan: {p.n} rows per arm; minimum {p.min_n}, planned {p.planned_n} "
            f"({p.mde:.0%} MDE = {p.effect_minutes:.3f} min, {p.power:.0%} power, sd {p.sd:.3f})"
        )
        lines.append(f"recommendation: {self.recommendation}")
        lines.append(f"reason: {self.reason}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- building blocks


def summarize_arm(arm: ArmData, tolerance: float) -> ArmSummary:
    """n, MAE, p90 absolute error, accuracy within ``tolerance``, interval coverage, bias."""
    n = len(arm)
    if n == 0:
        nan = float("nan")
        return ArmSummary(n=0, mae=nan, p90_abs_error=nan, accuracy=nan, coverage=nan, bias=nan)
    point = point_metrics(arm.actual, arm.eta, tolerance)  # the metrics training reports
    return ArmSummary(
        n=n,
        mae=point["mae"],
        p90_abs_error=point["p90_ae"],
        accuracy=point["accuracy"],
        coverage=interval_metrics(arm.actual, arm.p10, arm.p90)["coverage"],
        bias=float((arm.eta - arm.actual).mean()),
    )


def min_sample_size(
    variance: float, effect: float, *, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Rows per arm for a two-sided level-``alpha`` test to detect ``effect`` with ``power``.

    ``variance`` is ``n`` times the variance of the estimated difference of means after
    ``n`` rows per arm: ``var_b + var_c`` for two independent arms, ``var(d)`` for paired
    differences. Normal approximation: ``ceil((z_{1-alpha/2} + z_power)^2 variance / effect^2)``
    (no floor here; :func:`analyze` applies :data:`MIN_ROWS`).
    """
    if not effect > 0:
        raise ValueError(f"effect must be > 0 minutes, got {effect!r}")
    z = stats.norm.isf(alpha / 2) + stats.norm.ppf(power)
    return max(1, math.ceil(z * z * variance / (effect * effect)))


def _msprt_power(n: float, variance: float, effect: float, tau: float, alpha: float) -> float:
    """P(the mSPRT's look at ``n`` rows crosses 1/alpha) when the true difference is ``effect``."""
    v = variance / n
    t2 = tau * tau
    c = math.sqrt((v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + math.log((v + t2) / v)))
    return float(stats.norm.cdf(effect / math.sqrt(v) - c))


def sequential_horizon(
    variance: float,
    effect: float,
    tau: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    start: int = 1,
) -> int:
    """Smallest ``n >= start`` at which the mSPRT's last look alone has ``power`` at ``effect``.

    ``Lambda_n >= 1/alpha`` exactly when ``|theta_hat| / sqrt(V) >= c_n`` with
    ``c_n^2 = (V + tau^2) / tau^2 * (2 ln(1/alpha) + ln((V + tau^2) / V))``, ``V = variance/n``;
    the power of that one look is ``Phi(effect / sqrt(V) - c_n)``. Earlier looks can only
    add rejections, so the horizon is conservative.
    """
    if not (effect > 0 and tau > 0):
        raise ValueError(f"effect and tau must be > 0, got {effect!r} and {tau!r}")
    start = max(1, int(start))
    if variance <= 0 or _msprt_power(start, variance, effect, tau, alpha) >= power:
        return start
    lo, hi = start, 2 * start
    while _msprt_power(hi, variance, effect, tau, alpha) < power:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _msprt_power(mid, variance, effect, tau, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def prefix_mean_var(x: FloatArray, sizes: NDArray[np.int64]) -> tuple[FloatArray, FloatArray]:
    """Mean and sample variance (ddof=1) of the first ``sizes[k]`` values along the last axis.

    Works on stacks of experiments (``x`` of shape ``(..., n)``) with cumulative sums, after
    shifting by the first value so the sums of squares do not cancel. ``sizes >= 2``.
    """
    x = np.asarray(x, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    shifted = x - x[..., :1]
    s1 = np.cumsum(shifted, axis=-1)[..., sizes - 1]
    s2 = np.cumsum(shifted * shifted, axis=-1)[..., sizes - 1]
    mean_shifted = s1 / sizes
    var = np.maximum((s2 - s1 * mean_shifted) / (sizes - 1), 0.0)
    return mean_shifted + x[..., :1], var


def msprt_p_values(
    theta_hat: FloatArray, variance: FloatArray, tau: float | FloatArray
) -> FloatArray:
    """Always-valid p-values along the last axis (one entry per look).

    ``theta_hat`` and ``variance`` are the estimate and its variance at each look (any
    leading shape for stacks of experiments; ``tau`` broadcasts against them, e.g. one per
    experiment of shape ``(..., 1)``). Returns the running minimum of
    ``min(1, 1/Lambda)`` with the normal-mixture ``Lambda`` of the module docstring.
    A look with zero variance counts as certain: ``p = 0`` when ``theta_hat != 0``,
    ``p = 1`` when it is 0.
    """
    theta = np.asarray(theta_hat, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    t2 = np.square(np.asarray(tau, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lam = 0.5 * np.log(v / (v + t2)) + t2 * theta * theta / (2.0 * v * (v + t2))
    degenerate = v <= 0
    log_lam = np.where(degenerate, np.where(theta != 0, np.inf, 0.0), log_lam)
    p = np.minimum(1.0, np.exp(-log_lam))
    out: FloatArray = np.minimum.accumulate(p, axis=-1)
    return out


# --------------------------------------------------------------------------- checks


def _check_arm(name: str, arm: ArmData) -> None:
    n = None
    for field in _FIELDS:
        a = getattr(arm, field)
        if a.ndim != 1:
            raise ValueError(f"{name}.{field} must be a 1-D array, got shape {a.shape}")
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise ValueError(f"{name}.{field} has {a.shape[0]} rows but {name}.eta has {n}")
        bad = ~np.isfinite(a)
        if bad.any():
            raise ValueError(
                f"{name}.{field} has {int(bad.sum())} NaN or infinite values "
                f"(first at row {int(np.argmax(bad))})"
            )


def _check_params(
    mode: str, tolerance: float, alpha: float, power: float, mde: float, burn_in: int
) -> None:
    if mode not in ("ab", "shadow"):
        raise ValueError(f"mode must be 'ab' or 'shadow', got {mode!r}")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a positive number of minutes, got {tolerance!r}")
    for label, value in (("alpha", alpha), ("power", power), ("mde", mde)):
        if not 0 < value < 1:
            raise ValueError(f"{label} must be between 0 and 1 (exclusive), got {value!r}")
    if burn_in < 2:
        raise ValueError(f"burn_in must be at least 2 rows, got {burn_in!r}")


# --------------------------------------------------------------------------- the tests


def _finite_p(p: float, difference: float) -> float:
    """scipy's NaN p-value of a zero-variance sample becomes 1 (no difference) or 0."""
    if math.isnan(p):
        return 1.0 if difference == 0 else 0.0
    return float(p)


def _fixed_tests(mode: Mode, eb: FloatArray, ec: FloatArray) -> tuple[TestResult, ...]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        diff = float(ec.mean() - eb.mean())
        if mode == "ab":
            w = stats.ttest_ind(ec, eb, equal_var=False)
            return (
                TestResult(
                    name="welch_t",
                    statistic=float(np.nan_to_num(w.statistic)),
                    p_value=_finite_p(float(w.pvalue), diff),
                ),
            )
        d = ec - eb
        t = stats.ttest_rel(ec, eb)
        paired = TestResult(
            name="paired_t",
            statistic=float(np.nan_to_num(t.statistic)),
            p_value=_finite_p(float(t.pvalue), diff),
        )
        if not np.any(d != 0):
            wil = TestResult(name="wilcoxon", statistic=0.0, p_value=1.0)
        else:
            # Signed statistic: the rank sum of positive differences minus its mean under H0
            # (> 0: the candidate's errors are larger), so its sign reads like the t statistics.
            r = stats.wilcoxon(d)
            nz = d[d != 0]
            ranks = stats.rankdata(np.abs(nz))
            w_plus = float(ranks[nz > 0].sum())
            wil = TestResult(
                name="wilcoxon",
                statistic=w_plus - float(ranks.sum()) / 2.0,
                p_value=_finite_p(float(r.pvalue), diff),
            )
        return paired, wil


def _effect(mode: Mode, eb: FloatArray, ec: FloatArray, alpha: float) -> Effect:
    mb, mc = float(eb.mean()), float(ec.mean())
    ratio = mc / mb
    if mode == "ab":
        se = math.sqrt(
            float(ec.var(ddof=1)) / (ec.size * mb * mb)
            + mc * mc * float(eb.var(ddof=1)) / (eb.size * mb**4)
        )
    else:
        se = float(np.std(ec - ratio * eb, ddof=1)) / (math.sqrt(eb.size) * mb)
    z = float(stats.norm.isf(alpha / 2))
    return Effect(
        mae_difference=mc - mb,
        relative_change=ratio - 1.0,
        ci_low=ratio - 1.0 - z * se,
        ci_high=ratio - 1.0 + z * se,
        ci_level=1.0 - alpha,
    )


def _msprt(
    mode: Mode, eb: FloatArray, ec: FloatArray, tau: float, burn_in: int
) -> SequentialResult:
    nb, nc = eb.size, ec.size
    if mode == "shadow":
        sizes = np.arange(burn_in, nb + 1, dtype=np.int64)
        mean, var = prefix_mean_var(ec - eb, sizes)
        theta, v = mean, var / sizes
    else:
        k_max = min(nb, nc)
        k = np.arange(1, k_max + 1, dtype=np.int64)
        sb = -(-k * nb // k_max)
        sc = -(-k * nc // k_max)
        keep = (sb >= burn_in) & (sc >= burn_in)
        sb, sc = sb[keep], sc[keep]
        mean_b, var_b = prefix_mean_var(eb, sb)
        mean_c, var_c = prefix_mean_var(ec, sc)
        theta, v = mean_c - mean_b, var_b / sb + var_c / sc
    p = msprt_p_values(theta, v, tau)
    t2 = tau * tau
    last_v, last_t = float(v[-1]), float(theta[-1])
    if last_v > 0:
        log_lam = 0.5 * math.log(last_v / (last_v + t2)) + t2 * last_t**2 / (
            2 * last_v * (last_v + t2)
        )
    else:
        log_lam = math.inf if last_t != 0 else 0.0
    return SequentialResult(
        p_value=float(p[-1]), log_lambda=log_lam, tau=tau, burn_in=burn_in, looks=int(p.size)
    )


# --------------------------------------------------------------------------- the entry point


def analyze(
    mode: Mode,
    baseline: ArmData,
    candidate: ArmData,
    *,
    tolerance: float,
    alpha: float = 0.05,
    power: float = 0.8,
    mde: float = 0.05,
    sequential: bool = False,
    finished: bool = False,
    burn_in: int = MIN_ROWS,
) -> Analysis:
    """Summarise both arms, test ``MAE_c == MAE_b`` and recommend what to do with the candidate.

    ``mode``: ``"ab"`` (independent arms) or ``"shadow"`` (paired rows, same length).
    ``tolerance``: minutes for the accuracy share. ``alpha``: two-sided level of every test
    and ``1 -`` the interval's level. ``power`` and ``mde`` (relative MAE change worth
    detecting): the sample-size plan. ``sequential``: decide with the always-valid mSPRT
    p-value (safe to call after every batch). ``finished``: the experiment's planned
    duration is over. ``burn_in``: rows per arm before the mSPRT's first look.
    The decision rule is in the module docstring. Raises ValueError on an unknown mode,
    out-of-range settings, arrays of different lengths, or NaN/infinite values.
    """
    _check_params(mode, tolerance, alpha, power, mde, burn_in)
    _check_arm("baseline", baseline)
    _check_arm("candidate", candidate)
    if mode == "shadow" and len(baseline) != len(candidate):
        raise ValueError(
            f"shadow arms must be paired row by row: baseline has {len(baseline)} rows, "
            f"candidate has {len(candidate)}"
        )
    sb, sc = summarize_arm(baseline, tolerance), summarize_arm(candidate, tolerance)
    eb, ec = baseline.abs_errors(), candidate.abs_errors()
    n = min(eb.size, ec.size)
    if n >= 2 and sb.mae == 0:
        raise ValueError(
            f"baseline MAE is 0 over {eb.size} rows, so relative changes are undefined "
            "(are the baseline's eta values copies of actual?)"
        )

    # the plan
    if n >= 2:
        variance = (
            float(np.var(ec - eb, ddof=1))
            if mode == "shadow"
            else float(eb.var(ddof=1) + ec.var(ddof=1))
        )
        effect_min = mde * sb.mae
        min_n = max(MIN_ROWS, min_sample_size(variance, effect_min, alpha=alpha, power=power))
        # the burn-in rows fix tau; all-zero errors there fall back to the whole arm's MAE
        tau = mde * (float(eb[:burn_in].mean()) or sb.mae)
    else:
        variance, effect_min, min_n, tau = float("nan"), float("nan"), MIN_ROWS, float("nan")
    planned = min_n
    if sequential and n >= 2:
        planned = sequential_horizon(
            variance, effect_min, tau, alpha=alpha, power=power, start=min_n
        )
    plan = Plan(
        mde=mde,
        power=power,
        alpha=alpha,
        sd=math.sqrt(variance) if variance == variance else float("nan"),
        effect_minutes=effect_min,
        min_n=min_n,
        planned_n=planned,
        n=n,
    )

    # the tests
    tests: tuple[TestResult, ...] = ()
    effect: Effect | None = None
    seq: SequentialResult | None = None
    if n >= 2:
        tests = _fixed_tests(mode, eb, ec)
        effect = _effect(mode, eb, ec, alpha)
    if n >= burn_in:
        seq = _msprt(mode, eb, ec, tau, burn_in)
        tests = (*tests, TestResult(name="msprt", statistic=seq.log_lambda, p_value=seq.p_value))

    recommendation, reason, decided_by = _decide(
        mode,
        sb,
        sc,
        tests,
        effect,
        seq,
        plan,
        sequential=sequential,
        finished=finished,
        burn_in=burn_in,
    )
    return Analysis(
        mode=mode,
        sequential=sequential,
        finished=finished,
        tolerance=tolerance,
        alpha=alpha,
        baseline=sb,
        candidate=sc,
        effect=effect,
        tests=tests,
        msprt=seq,
        plan=plan,
        decided_by=decided_by,
        recommendation=recommendation,
        reason=reason,
    )


def _decide(
    mode: Mode,
    sb: ArmSummary,
    sc: ArmSummary,
    tests: tuple[TestResult, ...],
    effect: Effect | None,
    seq: SequentialResult | None,
    plan: Plan,
    *,
    sequential: bool,
    finished: bool,
    burn_in: int,
) -> tuple[Recommendation, str, str]:
    n, alpha = plan.n, plan.alpha
    if n < plan.min_n or effect is None:
        why = f"needs {plan.min_n - n} more rows per arm: {n} of the minimum {plan.min_n}" + (
            f" ({plan.mde:.0%} MDE = {plan.effect_minutes:.3f} min at {plan.power:.0%} "
            f"power, alpha {alpha:g}, sd {plan.sd:.3f} min)"
            if plan.effect_minutes == plan.effect_minutes
            else ""
        )
        if finished:
            why += "; the planned duration is over: extend it or decide by hand"
        return "continue_testing", why, ""
    by_name = {t.name: t for t in tests}
    if sequential and seq is None:
        return (
            "continue_testing",
            f"the mSPRT's first look needs more rows: {n} per arm, burn-in {burn_in}",
            "",
        )
    decider = by_name["msprt" if sequential else ("welch_t" if mode == "ab" else "paired_t")]
    label = {
        "welch_t": "Welch t-test",
        "paired_t": "paired t-test",
        "msprt": "mSPRT always-valid",
    }[decider.name]
    change = (
        f"candidate MAE {sc.mae:.3f} vs baseline {sb.mae:.3f} min "
        f"({effect.relative_change:+.2%}, {effect.ci_level:.0%} CI "
        f"{effect.ci_low:+.2%} to {effect.ci_high:+.2%})"
    )
    note = ""
    if mode == "shadow" and not sequential:
        wil = by_name["wilcoxon"]
        if (wil.p_value < alpha) != (decider.p_value < alpha) or (
            wil.p_value < alpha and (wil.statistic > 0) != (decider.statistic > 0)
        ):
            note = (
                f"; note: Wilcoxon signed-rank disagrees (p={wil.p_value:.3g}): the "
                "differences are skewed, check the largest errors"
            )
    p = decider.p_value
    if p < alpha and effect.mae_difference < 0:
        return (
            "promote_to_production",
            f"{change}: better, {label} p={p:.3g} < {alpha:g}{note}",
            decider.name,
        )
    if p < alpha and effect.mae_difference > 0:
        return (
            "archive_candidate",
            f"{change}: worse, {label} p={p:.3g} < {alpha:g}{note}",
            decider.name,
        )
    if n >= plan.planned_n or finished:
        where = (
            "the planned duration is over"
            if finished and n < plan.planned_n
            else f"{n} rows per arm reached the planned {plan.planned_n}"
        )
        return (
            "archive_candidate",
            f"no significant improvement: {where}; {change}, {label} p={p:.3g} >= {alpha:g}{note}",
            decider.name,
        )
    return (
        "continue_testing",
        f"no significant difference yet: {change}, {label} p={p:.3g} >= {alpha:g} at {n} of "
        f"the planned {plan.planned_n} rows per arm",
        decider.name,
    )
