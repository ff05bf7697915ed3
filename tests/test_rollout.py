"""Rollout statistics."""

import numpy as np
import pytest

from ditpolicy.envs.rollout import EvalResult, TaskResult, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (10, 10), (45, 50), (1, 1)])
def test_wilson_interval_contains_the_rate_and_matches_the_formula(k, n):
    lo, hi = wilson_interval(k, n)
    assert 0 <= lo <= k / n <= hi <= 1
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    assert lo <= centre <= hi


# 95% Wilson score intervals as tabulated in the literature (e.g. Newcombe 1998, method 3)
KNOWN = [((0, 10), (0.0, 0.2775)), ((10, 10), (0.7225, 1.0)), ((5, 10), (0.2366, 0.7634)),
         ((1, 1), (0.2065, 1.0)), ((45, 50), (0.7864, 0.9565)), ((95, 100), (0.8882, 0.9785)),
         ((1, 20), (0.0089, 0.2361))]


@pytest.mark.parametrize("counts,interval", KNOWN)
def test_wilson_interval_matches_known_values(counts, interval):
    lo, hi = wilson_interval(*counts)
    assert lo == pytest.approx(interval[0], abs=6e-5) and hi == pytest.approx(interval[1], abs=6e-5)


def test_summary_and_latency_keep_warm_up_apart():
    result = EvalResult([TaskResult("a", [True, True], [10, 20]), TaskResult("b", [False, True], [50, 30])],
                        chunk_latency_ms=list(np.arange(1, 101, dtype=float)), batch_size=2, warmup_ms=[900.0])
    d = result.as_dict()
    assert d["mean_success"] == 0.75 and d["episodes"] == 4 and d["mean_length"] == 27.5
    assert d["tasks"][1]["success_rate"] == 0.5
    assert d["chunk_latency_ms"]["p50"] == 50.5 and d["chunk_latency_ms"]["p99"] < 100
    assert d["chunk_latency_ms"]["warmup_ms"] == [900.0]
    assert "mean" in result.table().splitlines()[-2]
    assert "warm-up (graph building) 900 ms, not counted" in result.table()
