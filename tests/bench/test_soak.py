"""The soak test's judge (``bench/soak.py``), fed made-up samples so that each failure
rule is seen to fire and a clean run to pass. The one-minute run against a real server
judges latency, so it is a gate: ``bench/test_gates.py::test_one_minute_soak_gate``.
"""

from __future__ import annotations

from bench import soak

CFG = soak.SoakConfig(minutes=1.0, windows=5, swap_s=60.0)


def clean_result() -> soak.SoakResult:
    """60 s of steady made-up traffic: flat RSS and fds, equal latencies, the one swap."""
    res = soak.SoakResult(seconds=60.0, processes=2)
    for i in range(600):
        t = i * 0.1
        for route in soak.LOAD_ROUTES:
            res.requests.append((route, t, 2.0 + (i % 10) * 0.1, True))
    res.samples = [(t, 500 * 2**20, 40) for t in range(0, 60, 2)]
    res.swaps = [(30.0, "v2")]
    return res


def test_a_steady_run_passes() -> None:
    a = soak.analyse(CFG, clean_result())
    assert a["passed"], a["reasons"]
    assert a["routes"]["predict"]["requests"] == 600
    assert [w["n"] for w in a["routes"]["predict"]["windows"]] == [120] * 5


def test_rss_growth_after_warm_up_fails() -> None:
    res = clean_result()
    # +6 % from the last window on (48 s and later); the warm-up's end is 6..12 s
    res.samples = [(t, int(500 * 2**20 * (1.06 if t >= 48 else 1.0)), 40) for t in range(0, 60, 2)]
    a = soak.analyse(CFG, res)
    assert not a["passed"]
    assert any(r.startswith("RSS grew +6.0%") for r in a["reasons"]), a["reasons"]


def test_growth_during_warm_up_only_passes() -> None:
    res = clean_result()
    res.samples = [(t, int(500 * 2**20 * (1.0 if t >= 6 else 0.5)), 40) for t in range(0, 60, 2)]
    assert soak.analyse(CFG, res)["passed"]


def test_fd_growth_fails() -> None:
    res = clean_result()
    res.samples = [(t, 500 * 2**20, 40 + (100 if t >= 48 else 0)) for t in range(0, 60, 2)]
    a = soak.analyse(CFG, res)
    assert a["reasons"] == ["open fds grew from 40 to 140 (slack 32)"]


def test_one_failed_request_fails() -> None:
    res = clean_result()
    res.failures.append("predict /v1/predict at 3.0 s: HTTP 500: boom")
    a = soak.analyse(CFG, res)
    assert not a["passed"]
    assert "HTTP 500: boom" in a["reasons"][0]


def test_p99_drift_fails_above_the_floor_only() -> None:
    res = clean_result()
    slow = [
        (r, t, ms * 10 if r == "batch" and t >= 48 else ms, ok) for r, t, ms, ok in res.requests
    ]
    res.requests = slow  # batch p99 2.9 ms -> 29 ms in the last window
    a = soak.analyse(CFG, res)
    assert len(a["reasons"]) == 1 and a["reasons"][0].startswith("batch p99 drifted"), a["reasons"]
    # the same ratio under the absolute floor is noise, not drift
    floor = soak.SoakConfig(minutes=1.0, windows=5, swap_s=60.0, p99_floor_ms=30.0)
    assert soak.analyse(floor, res)["passed"]


def test_a_missing_swap_fails() -> None:
    res = clean_result()
    res.swaps = []
    assert soak.analyse(CFG, res)["reasons"] == ["0 model swaps took, 1 were due"]
