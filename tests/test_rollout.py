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


def test_known_interval_and_summary():
    lo, hi = wilson_interval(45, 50)
    assert abs(lo - 0.7864) < 1e-3 and abs(hi - 0.9565) < 1e-3
    result = EvalResult([TaskResult("a", [True, True], [10, 20]), TaskResult("b", [False, True], [50, 30])],
                        chunk_latency_ms=list(np.arange(1, 101, dtype=float)), batch_size=2)
    d = result.as_dict()
    assert d["mean_success"] == 0.75 and d["episodes"] == 4 and d["mean_length"] == 27.5
    assert d["tasks"][1]["success_rate"] == 0.5
    assert d["chunk_latency_ms"]["p50"] == 50.5
    assert "mean" in result.table().splitlines()[-2]
