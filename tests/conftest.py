import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
