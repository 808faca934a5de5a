"""Experiment statistics (training.abstats), proven by simulation with fixed seeds.

Error model (realistic for delivery ETAs): actual minutes ~ Gamma(shape 9, mean 35)
(sd ~11.7 min); a model's signed error on a delivery is ``0.2 * actual * z`` with
``z ~ N(0, 1)`` (sd ~7.4 min, larger on longer trips, so absolute errors are skewed and
heavy-tailed). The candidate's error on the same delivery is
``factor * 0.2 * actual * (RHO z + sqrt(1 - RHO^2) w)``: correlated with the baseline's
(RHO = 0.9; the absolute errors correlate at ~0.8) and ``factor = 0.95`` for a true 5 %
MAE improvement (1.0 for A/A). In A/B the arms hold different deliveries.

Thousands of experiments are simulated at once as matrices (one row per experiment), and
the looks use the module's own vectorised prefix statistics. Monte-Carlo standard errors
are ``sqrt(p (1 - p) / experiments)``. Run with ``-s`` to print the measured figures
(they are quoted in docs/experiments.md).
"""

from __future__ import annotations

import itertools
import math
import re

import msgspec
import numpy as np
import pytest
from scipy import stats

from training.abstats import (
    MIN_ROWS,
    Analysis,
    ArmData,
    analyze,
    min_sample_size,
    msprt_p_values,
    prefix_mean_var,
    sequential_horizon,
    summarize_arm,
)

RHO = 0.9
ALPHA = 0.05
EXPERIMENTS = 2000
LOOKS, BATCH = 20, 50  # peeking: 20 looks, one after each batch of 50 rows per arm
MC_SE = math.sqrt(ALPHA * (1 - ALPHA) / EXPERIMENTS)  # 0.0049


def _paired_errors(
    rng: np.random.Generator, shape: tuple[int, ...], factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Absolute errors of baseline and candidate on the same deliveries."""
    scale = 0.2 * rng.gamma(9.0, 35.0 / 9.0, size=shape)
    z = rng.standard_normal(shape)
    w = rng.standard_normal(shape)
    cand = factor * scale * (RHO * z + math.sqrt(1 - RHO * RHO) * w)
    return np.abs(scale * z), np.abs(cand)


def _ab_errors(
    rng: np.random.Generator, shape: tuple[int, ...], factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Absolute errors of baseline and candidate on different deliveries (A/B)."""
    base = np.abs(0.2 * rng.gamma(9.0, 35.0 / 9.0, size=shape) * rng.standard_normal(shape))
    cand = np.abs(0.2 * rng.gamma(9.0, 35.0 / 9.0, size=shape) * rng.standard_normal(shape))
    return base, factor * cand


def _welch_p(eb: np.ndarray, ec: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Welch p-values at each prefix size, for every experiment (rows)."""
    mb, vb = prefix_mean_var(eb, sizes)
    mc, vc = prefix_mean_var(ec, sizes)
    res = stats.ttest_ind_from_stats(
        mc, np.sqrt(vc), sizes, mb, np.sqrt(vb), sizes, equal_var=False
    )
    return np.asarray(res.pvalue)


def _paired_p(d: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    md, vd = prefix_mean_var(d, sizes)
    t = md / np.sqrt(vd / sizes)
    return np.asarray(2 * stats.t.sf(np.abs(t), sizes - 1))


def _msprt_ab(eb: np.ndarray, ec: np.ndarray, sizes: np.ndarray, burn_in: int) -> np.ndarray:
    mb, vb = prefix_mean_var(eb, sizes)
    mc, vc = prefix_mean_var(ec, sizes)
    tau = 0.05 * eb[:, :burn_in].mean(axis=1, keepdims=True)
    return msprt_p_values(mc - mb, vb / sizes + vc / sizes, tau)


def _msprt_paired(eb: np.ndarray, ec: np.ndarray, sizes: np.ndarray, burn_in: int) -> np.ndarray:
    md, vd = prefix_mean_var(ec - eb, sizes)
    tau = 0.05 * eb[:, :burn_in].mean(axis=1, keepdims=True)
    return msprt_p_values(md, vd / sizes, tau)


def _report(label: str, rate: float, experiments: int) -> None:
    se = math.sqrt(max(rate * (1 - rate), 1e-12) / experiments)
    print(f"\nabstats: {label} = {rate:.4f} (MC se {se:.4f}, {experiments} experiments)")


LOOK_SIZES = np.arange(1, LOOKS + 1, dtype=np.int64) * BATCH
ALL_PREFIXES = np.arange(MIN_ROWS, LOOKS * BATCH + 1, dtype=np.int64)


@pytest.fixture(scope="module")
def aa_ab() -> tuple[np.ndarray, np.ndarray]:
    return _ab_errors(np.random.default_rng(101), (EXPERIMENTS, LOOKS * BATCH), 1.0)


@pytest.fixture(scope="module")
def aa_paired() -> tuple[np.ndarray, np.ndarray]:
    return _paired_errors(np.random.default_rng(202), (EXPERIMENTS, LOOKS * BATCH), 1.0)


# --------------------------------------------------------------------------- A/A: error rates


def test_aa_welch_looked_at_once_holds_alpha(aa_ab: tuple[np.ndarray, np.ndarray]) -> None:
    eb, ec = aa_ab
    p = stats.ttest_ind(ec, eb, axis=1, equal_var=False).pvalue
    rate = float(np.mean(p < ALPHA))
    _report("A/A Welch t-test looked at once (1000 rows/arm), false-positive rate", rate, len(p))
    assert abs(rate - ALPHA) <= 3 * MC_SE


def test_aa_peeking_at_welch_inflates_false_positives(
    aa_ab: tuple[np.ndarray, np.ndarray],
) -> None:
    eb, ec = aa_ab
    p = _welch_p(eb, ec, LOOK_SIZES)
    # the last look is the fixed-horizon test: the prefix statistics agree with scipy's
    direct = stats.ttest_ind(ec, eb, axis=1, equal_var=False).pvalue
    np.testing.assert_allclose(p[:, -1], direct, rtol=1e-9)
    rate = float(np.mean((p < ALPHA).any(axis=1)))
    _report("A/A Welch t-test peeked 20 times, false-positive rate", rate, len(p))
    assert rate > 0.12  # 0.12 is > 14 MC standard errors above 0.05


def test_aa_msprt_peeked_20_times_holds_alpha(aa_ab: tuple[np.ndarray, np.ndarray]) -> None:
    eb, ec = aa_ab
    p = _msprt_ab(eb, ec, LOOK_SIZES, burn_in=BATCH)
    assert np.all(np.diff(p, axis=1) <= 0)  # a running minimum
    rate = float(np.mean(p[:, -1] < ALPHA))
    _report("A/A mSPRT (A/B) peeked 20 times, false-positive rate", rate, len(p))
    assert rate <= ALPHA + 3 * MC_SE


def test_aa_msprt_monitored_after_every_row_holds_alpha(
    aa_ab: tuple[np.ndarray, np.ndarray],
) -> None:
    """What analyze() computes: a look at every prefix from the burn-in on."""
    eb, ec = aa_ab
    p = _msprt_ab(eb, ec, ALL_PREFIXES, burn_in=MIN_ROWS)
    rate = float(np.mean(p[:, -1] < ALPHA))
    _report("A/A mSPRT (A/B) looked at every row 100..1000, false-positive rate", rate, len(p))
    assert rate <= ALPHA + 3 * MC_SE


def test_aa_paired_t_once_peeking_and_msprt(aa_paired: tuple[np.ndarray, np.ndarray]) -> None:
    eb, ec = aa_paired
    p_once = stats.ttest_rel(ec, eb, axis=1).pvalue
    once = float(np.mean(p_once < ALPHA))
    p_peek = _paired_p(ec - eb, LOOK_SIZES)
    np.testing.assert_allclose(p_peek[:, -1], p_once, rtol=1e-9)
    peek = float(np.mean((p_peek < ALPHA).any(axis=1)))
    seq20 = float(np.mean(_msprt_paired(eb, ec, LOOK_SIZES, burn_in=BATCH)[:, -1] < ALPHA))
    seq_all = float(np.mean(_msprt_paired(eb, ec, ALL_PREFIXES, burn_in=MIN_ROWS)[:, -1] < ALPHA))
    _report("A/A paired t-test looked at once, false-positive rate", once, EXPERIMENTS)
    _report("A/A paired t-test peeked 20 times, false-positive rate", peek, EXPERIMENTS)
    _report("A/A mSPRT (paired) peeked 20 times, false-positive rate", seq20, EXPERIMENTS)
    _report("A/A mSPRT (paired) looked at every row, false-positive rate", seq_all, EXPERIMENTS)
    assert abs(once - ALPHA) <= 3 * MC_SE
    assert peek > 0.12
    assert seq20 <= ALPHA + 3 * MC_SE
    assert seq_all <= ALPHA + 3 * MC_SE


# --------------------------------------------------------------------------- power and sample size


def test_shadow_has_more_power_than_ab_at_the_same_n() -> None:
    n = 1000
    rng = np.random.default_rng(303)
    eb, ec = _ab_errors(rng, (EXPERIMENTS, n), 0.95)
    p_ab = stats.ttest_ind(ec, eb, axis=1, equal_var=False).pvalue
    power_ab = float(np.mean((p_ab < ALPHA) & (ec.mean(axis=1) < eb.mean(axis=1))))
    eb, ec = _paired_errors(rng, (EXPERIMENTS, n), 0.95)
    p_sh = stats.ttest_rel(ec, eb, axis=1).pvalue
    power_sh = float(np.mean((p_sh < ALPHA) & (ec.mean(axis=1) < eb.mean(axis=1))))
    _report(f"power at a true 5% MAE improvement, A/B Welch, n={n}/arm", power_ab, EXPERIMENTS)
    _report(f"power at a true 5% MAE improvement, shadow paired t, n={n}", power_sh, EXPERIMENTS)
    assert power_sh > power_ab + 0.3  # ~0.85 vs ~0.25: pairing removes the per-order noise


@pytest.fixture(scope="module")
def pilot() -> dict[str, float]:
    """Variances of the error model from a large pilot, as analyze() would estimate them."""
    rng = np.random.default_rng(404)
    eb, ec = _paired_errors(rng, (400_000,), 0.95)
    ab_b, ab_c = _ab_errors(rng, (400_000,), 0.95)
    return {
        "effect": 0.05 * float(eb.mean()),
        "var_ab": float(ab_b.var(ddof=1) + ab_c.var(ddof=1)),
        "var_d": float(np.var(ec - eb, ddof=1)),
    }


def test_min_sample_size_gives_the_stated_power_shadow(pilot: dict[str, float]) -> None:
    n = min_sample_size(pilot["var_d"], pilot["effect"], alpha=ALPHA, power=0.8)
    eb, ec = _paired_errors(np.random.default_rng(505), (EXPERIMENTS, n), 0.95)
    p = stats.ttest_rel(ec, eb, axis=1).pvalue
    power = float(np.mean((p < ALPHA) & (ec.mean(axis=1) < eb.mean(axis=1))))
    _report(f"shadow: n for 5% MDE at 80% power = {n}; simulated power", power, EXPERIMENTS)
    assert abs(power - 0.8) <= 0.05


def test_min_sample_size_gives_the_stated_power_ab(pilot: dict[str, float]) -> None:
    n = min_sample_size(pilot["var_ab"], pilot["effect"], alpha=ALPHA, power=0.8)
    experiments = 1000  # ~4500 rows per arm each; MC se of the power ~0.013
    eb, ec = _ab_errors(np.random.default_rng(606), (experiments, n), 0.95)
    p = stats.ttest_ind(ec, eb, axis=1, equal_var=False).pvalue
    power = float(np.mean((p < ALPHA) & (ec.mean(axis=1) < eb.mean(axis=1))))
    _report(f"A/B: n per arm for 5% MDE at 80% power = {n}; simulated power", power, experiments)
    assert abs(power - 0.8) <= 0.05
    horizon = sequential_horizon(
        pilot["var_ab"], pilot["effect"], pilot["effect"], alpha=ALPHA, power=0.8, start=n
    )
    print(f"abstats: A/B mSPRT horizon for 5% MDE at 80% power = {horizon} rows per arm")
    assert n < horizon < 3 * n


def test_msprt_reaches_the_power_by_its_horizon_shadow(pilot: dict[str, float]) -> None:
    n_min = min_sample_size(pilot["var_d"], pilot["effect"], alpha=ALPHA, power=0.8)
    horizon = sequential_horizon(
        pilot["var_d"], pilot["effect"], pilot["effect"], alpha=ALPHA, power=0.8, start=n_min
    )
    experiments = 1000
    eb, ec = _paired_errors(np.random.default_rng(707), (experiments, horizon), 0.95)
    sizes = np.arange(MIN_ROWS, horizon + 1, dtype=np.int64)
    p = _msprt_paired(eb, ec, sizes, burn_in=MIN_ROWS)
    at_min = float(np.mean(p[:, n_min - MIN_ROWS] < ALPHA))
    at_horizon = float(np.mean(p[:, -1] < ALPHA))
    _report(f"shadow mSPRT power by n_min={n_min}", at_min, experiments)
    _report(f"shadow mSPRT power by its horizon n={horizon}", at_horizon, experiments)
    assert n_min < horizon < 3 * n_min
    assert at_horizon >= 0.8 - 3 * math.sqrt(0.16 / experiments)  # the horizon is conservative
    assert at_min < at_horizon


# --------------------------------------------------------------------------- analyze() itself


def _arm(errors: np.ndarray, actual: np.ndarray | None = None) -> ArmData:
    """An arm whose absolute errors are ``errors`` (alternately late and early)."""
    errors = np.asarray(errors, dtype=np.float64)
    if actual is None:
        actual = np.full(errors.shape, 35.0)
    sign = np.where(np.arange(errors.size) % 2 == 0, 1.0, -1.0)
    eta = actual + sign * errors
    return ArmData(eta=eta, p10=eta - 4.0, p90=eta + 4.0, actual=actual)


def test_summary_on_hand_built_rows() -> None:
    arm = ArmData(
        eta=np.array([30.0, 40.0, 20.0, 50.0]),
        p10=np.array([25.0, 38.0, 21.0, 40.0]),
        p90=np.array([35.0, 45.0, 30.0, 60.0]),
        actual=np.array([32.0, 36.0, 20.0, 40.0]),
    )
    s = summarize_arm(arm, tolerance=3.0)
    assert s.n == 4
    assert s.mae == pytest.approx((2 + 4 + 0 + 10) / 4)
    assert s.p90_abs_error == pytest.approx(np.quantile([2.0, 4.0, 0.0, 10.0], 0.9))
    assert s.accuracy == pytest.approx(0.5)  # errors 2 and 0 are within 3 minutes
    assert s.coverage == pytest.approx(0.5)  # 32 in [25, 35], 40 in [40, 60]; 36 and 20 out
    assert s.bias == pytest.approx((-2 + 4 + 0 + 10) / 4)


def test_analyze_matches_scipy_on_one_experiment() -> None:
    rng = np.random.default_rng(808)
    eb, ec = _paired_errors(rng, (3000,), 0.95)
    a = analyze("shadow", _arm(eb), _arm(ec), tolerance=5.0, sequential=True)
    tests = {t.name: t for t in a.tests}
    assert tests["paired_t"].p_value == pytest.approx(stats.ttest_rel(ec, eb).pvalue, rel=1e-9)
    assert tests["wilcoxon"].p_value == pytest.approx(stats.wilcoxon(ec - eb).pvalue, rel=1e-9)
    expected = _msprt_paired(eb[None], ec[None], np.arange(MIN_ROWS, 3001), MIN_ROWS)[0, -1]
    assert a.msprt is not None and a.msprt.p_value == pytest.approx(expected, rel=1e-12)
    assert a.msprt.looks == 3000 - MIN_ROWS + 1
    assert a.decided_by == "msprt"

    # a 20% MDE keeps 2000 rows per arm above the minimum, so the Welch test decides
    ab = analyze("ab", _arm(eb[:2000]), _arm(ec[1000:]), tolerance=5.0, mde=0.2)
    assert ab.plan.n == 2000 >= ab.plan.min_n
    welch = stats.ttest_ind(ec[1000:], eb[:2000], equal_var=False).pvalue
    assert {t.name: t for t in ab.tests}["welch_t"].p_value == pytest.approx(welch, rel=1e-9)
    assert ab.decided_by == "welch_t"
    assert ab.effect is not None
    assert ab.effect.relative_change == pytest.approx(ec[1000:].mean() / eb[:2000].mean() - 1)


def test_always_valid_p_never_rises_as_shadow_rows_arrive() -> None:
    eb, ec = _paired_errors(np.random.default_rng(909), (2000,), 1.0)
    ps = [
        analyze("shadow", _arm(eb[:n]), _arm(ec[:n]), tolerance=5.0, sequential=True)
        for n in range(200, 2001, 200)
    ]
    seqs = [a.msprt for a in ps if a.msprt is not None]
    assert len(seqs) == 10
    assert all(b.p_value <= a.p_value for a, b in itertools.pairwise(seqs))
    assert {s.tau for s in seqs} == {seqs[0].tau}  # fixed by the burn-in rows
    assert seqs[-1].p_value < 1.0


@pytest.mark.parametrize("mode", ["ab", "shadow"])
def test_delta_method_interval_covers_the_true_change(mode: str) -> None:
    rng = np.random.default_rng(1010 if mode == "ab" else 1111)
    gen = _ab_errors if mode == "ab" else _paired_errors
    truth = -0.05
    runs, covered = 200, 0
    eb_all, ec_all = gen(rng, (runs, 1000), 0.95)
    for eb, ec in zip(eb_all, ec_all, strict=True):
        e = analyze(mode, _arm(eb), _arm(ec), tolerance=5.0).effect  # type: ignore[arg-type]
        assert e is not None
        covered += e.ci_low <= truth <= e.ci_high
    rate = covered / runs
    _report(f"{mode}: 95% delta-method interval coverage of the relative change", rate, runs)
    assert abs(rate - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / runs)


# --------------------------------------------------------------------------- the recommendation


def test_under_the_minimum_always_continues_and_says_how_many_rows_are_missing() -> None:
    rng = np.random.default_rng(1212)
    eb = np.abs(rng.normal(0, 7, 60))
    # even a candidate twice as bad is not judged on 60 rows
    a = analyze("ab", _arm(eb), _arm(2 * eb), tolerance=5.0, finished=True)
    assert a.recommendation == "continue_testing"
    assert a.plan.min_n >= MIN_ROWS
    assert a.reason.startswith(f"needs {a.plan.min_n - 60} more rows per arm: 60 of the minimum")
    assert "planned duration is over" in a.reason
    empty = analyze("shadow", _arm(np.array([])), _arm(np.array([])), tolerance=5.0)
    assert empty.recommendation == "continue_testing"
    assert empty.reason.startswith(f"needs {MIN_ROWS} more rows per arm")
    assert empty.tests == () and empty.effect is None and math.isnan(empty.baseline.mae)


@pytest.mark.parametrize("mode", ["ab", "shadow"])
@pytest.mark.parametrize("sequential", [False, True])
def test_clear_win_promotes_and_clear_loss_archives(mode: str, sequential: bool) -> None:
    eb = np.abs(np.random.default_rng(1313).normal(0, 7, 6000))
    win = analyze(mode, _arm(eb), _arm(0.7 * eb), tolerance=5.0, sequential=sequential)  # type: ignore[arg-type]
    assert win.recommendation == "promote_to_production"
    assert "better" in win.reason and "-30.00%" in win.reason
    loss = analyze(mode, _arm(eb), _arm(1.3 * eb), tolerance=5.0, sequential=sequential)  # type: ignore[arg-type]
    assert loss.recommendation == "archive_candidate"
    assert "worse" in loss.reason and "+30.00%" in loss.reason
    assert win.decided_by == loss.decided_by == ("msprt" if sequential else win.tests[0].name)


def test_no_difference_with_enough_data_archives_and_sequential_waits_for_its_horizon() -> None:
    rng = np.random.default_rng(1414)
    n = 300
    eb = rng.uniform(3.0, 10.0, n)
    u = rng.uniform(-3.0, 3.0, n // 2)
    d = np.empty(n)
    d[0::2], d[1::2] = u, -u  # candidate neither better nor worse: the differences cancel
    base, cand = _arm(eb), _arm(eb + d)

    fixed = analyze("shadow", base, cand, tolerance=5.0)
    assert fixed.plan.min_n == fixed.plan.planned_n <= n
    assert fixed.recommendation == "archive_candidate"
    assert fixed.reason.startswith("no significant improvement")

    seq = analyze("shadow", base, cand, tolerance=5.0, sequential=True)
    assert seq.plan.min_n <= n < seq.plan.planned_n
    assert seq.recommendation == "continue_testing"
    assert seq.reason.startswith("no significant difference yet")
    assert f"at {n} of the planned {seq.plan.planned_n} rows per arm" in seq.reason

    over = analyze("shadow", base, cand, tolerance=5.0, sequential=True, finished=True)
    assert over.recommendation == "archive_candidate"
    assert "the planned duration is over" in over.reason


def test_skewed_differences_make_wilcoxon_disagree_and_the_reason_says_so() -> None:
    # the candidate is 0.5 min better on 90% of orders and 6 min worse on 10%: its MAE is
    # higher (the mean of d is +0.15) though most differences favour it
    n = 2000
    eb = np.random.default_rng(1515).uniform(4.0, 12.0, n)
    d = np.where(np.arange(n) % 10 == 0, 6.0, -0.5)
    a = analyze("shadow", _arm(eb), _arm(eb + d), tolerance=5.0)
    tests = {t.name: t for t in a.tests}
    assert tests["paired_t"].statistic > 0 and tests["wilcoxon"].statistic < 0
    assert a.recommendation == "archive_candidate"
    assert "Wilcoxon signed-rank disagrees" in a.reason


def test_json_round_trip_and_text() -> None:
    eb = np.abs(np.random.default_rng(1616).normal(0, 7, 500))
    a = analyze("shadow", _arm(eb), _arm(0.8 * eb), tolerance=5.0, sequential=True)
    assert msgspec.json.decode(msgspec.json.encode(a), type=Analysis) == a
    d = a.to_dict()
    assert d["recommendation"] == a.recommendation and d["plan"]["n"] == 500
    assert {t["name"] for t in d["tests"]} == {"paired_t", "wilcoxon", "msprt"}
    text = a.format_text()
    assert "recommendation: promote_to_production" in text
    assert "baseline" in text and "candidate" in text and "mSPRT" in text


# --------------------------------------------------------------------------- bad input


def _good(n: int = 10) -> ArmData:
    return _arm(np.linspace(1.0, 5.0, n))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "abc"}, "mode must be 'ab' or 'shadow', got 'abc'"),
        ({"tolerance": 0.0}, "tolerance must be a positive number"),
        ({"alpha": 1.5}, "alpha must be between 0 and 1"),
        ({"power": 0.0}, "power must be between 0 and 1"),
        ({"mde": -0.1}, "mde must be between 0 and 1"),
        ({"burn_in": 1}, "burn_in must be at least 2"),
        (
            {"candidate": _arm(np.ones(7)), "mode": "shadow"},
            "shadow arms must be paired row by row: baseline has 10 rows, candidate has 7",
        ),
        (
            {
                "baseline": ArmData(
                    eta=np.ones(10), p10=np.ones(9), p90=np.ones(10), actual=np.ones(10)
                )
            },
            "baseline.p10 has 9 rows but baseline.eta has 10",
        ),
        (
            {
                "candidate": ArmData(
                    eta=np.ones(4),
                    p10=np.ones(4),
                    p90=np.ones(4),
                    actual=np.array([1.0, np.nan, 2.0, np.nan]),
                )
            },
            "candidate.actual has 2 NaN or infinite values (first at row 1)",
        ),
        (
            {
                "baseline": ArmData(
                    eta=np.ones((2, 2)), p10=np.ones(4), p90=np.ones(4), actual=np.ones(4)
                )
            },
            "baseline.eta must be a 1-D array",
        ),
        (
            {
                "baseline": ArmData(
                    eta=np.full(5, 3.0), p10=np.ones(5), p90=np.ones(5), actual=np.full(5, 3.0)
                )
            },
            "baseline MAE is 0 over 5 rows",
        ),
    ],
)
def test_bad_input_is_a_clear_value_error(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"mode": "ab", "baseline": _good(), "candidate": _good()}
    args.update(kwargs)
    mode, base, cand = args.pop("mode"), args.pop("baseline"), args.pop("candidate")
    options: dict[str, object] = {"tolerance": 5.0, **args}
    with pytest.raises(ValueError, match=re.escape(message)):
        analyze(mode, base, cand, **options)  # type: ignore[arg-type]
