"""Consistency distillation: a second stage from a checkpoint, through the shared trainer.

The behavioural check: on the toy reaching task the distilled student's one-step chunks land
nearer the teacher's ten-step chunks (same observation, same starting noise) than the
teacher's own one-step chunks do; that is what distillation is for. The student checkpoint
round-trips: written, read back, it predicts the same chunks, and it records its teacher.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import TINY_POLICY, write_reaching_store

from ditpolicy.config import compose
from ditpolicy.datasets import DemoStore, SequenceSampler
from ditpolicy.policies import Policy
from ditpolicy.policies.distill import ConsistencyDistillation
from ditpolicy.policies.train import train


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    write_reaching_store(root / "reach.zarr", episodes=8)
    train(compose("train", [f"dataset.path={root / 'reach.zarr'}", f"run_dir={root / 'teacher'}", "train.steps=400",
                            *TINY_POLICY]))
    return root / "teacher"


def chunks(policy, steps, store, n=64):
    """Chunks for the first n training windows of the store, from fixed noise."""
    sampler = SequenceSampler(DemoStore.open(store), obs_keys=["state"], n_obs=policy.spec.n_obs,
                              horizon=policy.spec.horizon)
    batch = {k: torch.as_tensor(v) for k, v in sampler.sample_batch(np.arange(n)).items() if k != "action"}
    return policy.predict_action_chunks(batch, steps, generator=torch.Generator().manual_seed(9))


def test_distilled_one_step_matches_the_ten_step_teacher(teacher):
    result = subprocess.run([sys.executable, "-m", "ditpolicy", "distill", f"checkpoint={teacher}", "train.steps=300",
                             "train.progress=false", "inference_steps=1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    student_dir = teacher.parent / "teacher-distilled"
    latest = student_dir / "checkpoints" / "latest"
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["distilled_from"] == str((teacher / "checkpoints" / "latest").resolve())
    assert meta["distillation"] == {"method": "consistency", "teacher_steps": 10, "loss": "pseudo_huber",
                                    "target": "teacher"}

    t = Policy.from_checkpoint(teacher, device="cpu")
    s = Policy.from_checkpoint(student_dir, device="cpu")
    assert s.spec.inference_steps == 1
    store = teacher.parent / "reach.zarr"
    reference = chunks(t, 10, store)
    teacher_gap = (chunks(t, 1, store) - reference).abs().mean()
    student_gap = (chunks(s, 1, store) - reference).abs().mean()
    assert student_gap < 0.7 * teacher_gap, (float(student_gap), float(teacher_gap))   # measured: about 0.5

    again = Policy.from_checkpoint(latest, device="cpu")                  # round trip: the same chunks
    assert torch.equal(chunks(again, 1, store), chunks(s, 1, store))


def test_distillation_settings_are_checked(teacher, tmp_path):
    t = Policy.from_checkpoint(teacher, device="cpu")
    with pytest.raises(ValueError, match="loss"):
        ConsistencyDistillation(t, loss="l1")
    with pytest.raises(ValueError, match="teacher_steps"):
        ConsistencyDistillation(t, teacher_steps=0)
    missing = subprocess.run([sys.executable, "-m", "ditpolicy", "distill", f"checkpoint={tmp_path / 'nope'}"],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "nope" in missing.stderr
