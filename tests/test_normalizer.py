"""Normaliser round trips, constant dimensions and safetensors persistence."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ditpolicy.datasets import Normalizer
from ditpolicy.datasets.stats import array_stats


@settings(max_examples=50, deadline=None)
@given(values=arrays(np.float32, (20, 3), elements=st.floats(-1e3, 1e3, width=32)),
       mode=st.sampled_from(["limits", "gaussian", "identity"]))
def test_round_trip(values, mode):
    norm = Normalizer.from_stats({"x": array_stats(values)}, {"x": mode})
    y = norm.normalize("x", values)
    back = norm.unnormalize("x", y)
    np.testing.assert_allclose(back, values, rtol=1e-5, atol=1e-3)
    if mode == "limits":
        assert y.min() >= -1 - 1e-4 and y.max() <= 1 + 1e-4


def test_limits_map_to_unit_box_and_centre_constant_dims():
    values = np.array([[0.0, 5.0, 2.0], [10.0, 5.0, 4.0]], np.float32)
    norm = Normalizer.from_stats({"a": array_stats(values)}, {"a": "limits"})
    y = norm.normalize("a", values)
    np.testing.assert_allclose(y, [[-1, 0, -1], [1, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(norm.unnormalize("a", y), values, atol=1e-5)


def test_torch_and_numpy_agree_and_save_load_is_exact(tmp_path):
    values = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    stats = {"a": array_stats(values), "b": array_stats(values * 3)}
    norm = Normalizer.from_stats(stats, {"a": "limits", "b": "gaussian"})
    norm.save(tmp_path / "n.safetensors")
    loaded = Normalizer.load(tmp_path / "n.safetensors")
    assert loaded.modes == norm.modes
    for key in ("a", "b"):
        for mine, theirs in zip(norm.params[key], loaded.params[key]):
            np.testing.assert_array_equal(mine, theirs)
    t = torch.from_numpy(values)
    np.testing.assert_allclose(loaded.normalize("a", t).numpy(), norm.normalize("a", values), rtol=1e-6)


def test_unknown_mode_and_missing_key_are_named():
    stats = {"a": array_stats(np.zeros((3, 2)))}
    with pytest.raises(ValueError, match="mode for 'a'"):
        Normalizer.from_stats(stats, {"a": "minmax"})
    with pytest.raises(KeyError, match="no statistics for key 'b'"):
        Normalizer.from_stats(stats, {"b": "limits"})
    with pytest.raises(KeyError, match="normaliser has no key 'c'"):
        Normalizer.from_stats(stats, {"a": "limits"}).normalize("c", np.zeros(2))
