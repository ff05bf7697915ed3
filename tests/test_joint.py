"""Joint video-action denoising: the frame autoencoder, training windows with future frames and
action-free episodes, the four inference modes, and the loss of action-free samples."""

import numpy as np
import pytest
import torch

from helpers import TINY_POLICY

from ditpolicy.datasets import DemoStore, EpisodeWriter, SequenceSampler
from ditpolicy.policies.autoencoder import FrameAutoencoder, psnr
from ditpolicy.policies.joint import MODES, JointDenoiser, future_batch_key, predict

SIZE = 32
LABELLED, ACTION_FREE, LENGTH = 6, 3, 24


def blob_frames(points: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Frames (T, size, size, 3) uint8 of a soft red blob at each 2-D point in [-1, 1] on a shaded floor."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    frames = []
    for x, y in points:
        d = (xx - x) ** 2 + (yy - y) ** 2
        img = np.stack([np.exp(-d / 0.05), 0.3 + 0.2 * yy, 0.5 * np.exp(-d / 0.2)], -1)
        frames.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return np.array(frames)


def write_blob_store(path, seed: int = 0) -> None:
    """A point moved toward its goal by the action, seen by a camera; the last episodes action-free."""
    rng = np.random.default_rng(seed)
    with EpisodeWriter(path, overwrite=True) as writer:
        for e in range(LABELLED + ACTION_FREE):
            point, goal = rng.uniform(-0.8, 0.8, 2), rng.uniform(-0.8, 0.8, 2)
            states, actions, points = [], [], []
            for _ in range(LENGTH):
                action = np.clip(goal - point, -0.2, 0.2) * 5
                states.append(np.concatenate([point, goal]))
                actions.append(action)
                points.append(point.copy())
                point = point + 0.1 * action
            data = {"state": np.array(states, np.float32), "rgb_cam": blob_frames(np.array(points))}
            if e < LABELLED:
                data["action"] = np.array(actions, np.float32)
            writer.add_episode(data, task="reach", has_action=e < LABELLED)


JOINT = ["policy/denoiser=joint", "dataset.obs_keys=[rgb_cam,state]", "policy.denoiser.autoencoder.steps=60",
         "policy.denoiser.autoencoder.widths=[8,16,16]", "policy.denoiser.future_offsets=[4,8]", "dataset.val_fraction=0.2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny joint policy trained for a few steps on the blob store: (trainer, run dir, store path)."""
    from ditpolicy.config import compose
    from ditpolicy.policies.train import Trainer

    root = tmp_path_factory.mktemp("joint")
    write_blob_store(root / "blobs.zarr")
    cfg = compose("train", [f"dataset.path={root / 'blobs.zarr'}", f"run_dir={root / 'run'}", "train.steps=6",
                            *TINY_POLICY, *JOINT])
    trainer = Trainer(cfg)
    trainer.run()
    return trainer, root / "run", root / "blobs.zarr"


def test_autoencoder_reconstructs_held_out_frames_above_24_db():
    rng = np.random.default_rng(1)
    train, held_out = blob_frames(rng.uniform(-1, 1, (600, 2))), blob_frames(rng.uniform(-1, 1, (64, 2)))
    torch.manual_seed(0)
    ae = FrameAutoencoder((SIZE, SIZE, 3), latent_channels=8, widths=(16, 32, 32))
    assert ae.latent_shape == (8, 4, 4)
    from ditpolicy.policies.train import fit_stage

    fit_stage(ae, ae.reconstruction_loss, train, steps=400, batch_size=32, lr=2e-3, progress=False)
    with torch.no_grad():
        recon = ae.decode(ae.encode(torch.from_numpy(held_out)))
    assert recon.shape == (64, SIZE, SIZE, 3)
    score = psnr(recon, held_out)
    untrained = FrameAutoencoder((SIZE, SIZE, 3), latent_channels=8, widths=(16, 32, 32))
    with torch.no_grad():
        baseline = psnr(untrained.decode(untrained.encode(torch.from_numpy(held_out))), held_out)
    assert score >= 24.0, score
    assert score > baseline + 8.0, (score, baseline)


def test_sampler_gives_future_frames_and_flags_action_free_windows(tmp_path):
    write_blob_store(tmp_path / "s.zarr")
    store = DemoStore.open(tmp_path / "s.zarr")
    assert store.has_action.tolist() == [True] * LABELLED + [False] * ACTION_FREE
    labelled = SequenceSampler(store, ["state"], n_obs=2, horizon=8)
    both = SequenceSampler(store, ["state"], n_obs=2, horizon=8, future_keys=["rgb_cam"], future_offsets=[4, 8],
                           action_free=True)
    assert len(both) == len(labelled) * (LABELLED + ACTION_FREE) // LABELLED
    frames = store.read("rgb_cam")
    rows = np.arange(len(both))
    batch = both.sample_batch(rows)
    current = both.windows[rows, 2]
    ends = both.windows[rows, 1]
    for j, offset in enumerate((4, 8)):
        assert np.array_equal(batch["future_rgb_cam"][:, j], frames[np.minimum(current + offset, ends - 1)])
    episode = np.searchsorted(store.episode_ends, current, side="right")
    assert np.array_equal(batch["has_action"], episode < LABELLED)
    assert "has_action" not in labelled.sample_batch(np.arange(4))


def test_action_free_share_caps_the_video_rows_of_each_batch(tmp_path):
    from ditpolicy.datasets.loader import step_draws

    write_blob_store(tmp_path / "s.zarr")
    store = DemoStore.open(tmp_path / "s.zarr")
    args = dict(obs_keys=["state"], n_obs=2, horizon=8, future_keys=["rgb_cam"], future_offsets=[4], action_free=True)
    uniform = SequenceSampler(store, **args)
    capped = SequenceSampler(store, **args, action_free_share=0.1)
    free = ~capped.step_has_action[capped.windows[:, 2]]
    assert abs(free.mean() - ACTION_FREE / (LABELLED + ACTION_FREE)) < 0.01    # a third of the windows
    rows = capped.draw(np.random.default_rng(0), 200_000)
    assert abs(free[rows].mean() - 0.1) < 0.01
    for group in (free, ~free):                      # uniform within each group: every window, evenly
        counts = np.bincount(rows[group[rows]], minlength=len(free))[group]
        assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()
    # a cap above the store's share leaves the draws as they were, row for row
    above = SequenceSampler(store, **args, action_free_share=0.5)
    assert np.array_equal(above.draw(np.random.default_rng(3), 64), uniform.draw(np.random.default_rng(3), 64))
    a, seed_a = step_draws(1, 5, capped, 32)
    b, seed_b = step_draws(1, 5, capped, 32)
    assert np.array_equal(a, b) and seed_a == seed_b
    with pytest.raises(ValueError, match="action_free_share"):
        SequenceSampler(store, **args, action_free_share=1.0)


def test_each_mode_sets_the_noise_levels_of_each_stream(trained):
    trainer, _, _ = trained
    policy = trainer.ema_policy()
    den = policy.denoiser
    assert isinstance(den, JointDenoiser) and den.future_offsets == [4, 8]
    batch = {k: torch.as_tensor(v) for k, v in trainer.train_sampler.sample_batch(np.arange(3)).items()}
    future = batch[future_batch_key("rgb_cam")]
    assert future.shape == (3, 2, SIZE, SIZE, 3)
    calls = []
    original = den.joint

    def recording(actions, t_action, video, t_video, prepared, *rows):
        calls.append((actions, t_action, video, t_video))
        return original(actions, t_action, video, t_video, prepared, *rows)

    den.joint = recording
    steps = 4
    expected_levels = [1.0, 0.75, 0.5, 0.25]                  # flow's Euler levels from pure noise
    for mode, (sampled, clean) in MODES.items():
        calls.clear()
        result = predict(policy, batch, mode, steps, actions=batch["action"], future=future)
        assert len(calls) == steps, mode
        for i, (actions, t_action, video, t_video) in enumerate(calls):
            levels = {"action": t_action, "video": t_video}
            streams = {"action": actions, "video": video}
            if sampled == "both":                             # plan: both streams sampled at one level
                for name in ("action", "video"):
                    assert torch.allclose(levels[name], torch.full((3,), expected_levels[i])), (mode, i)
                continue
            assert torch.allclose(levels[sampled], torch.full((3,), expected_levels[i])), (mode, i)
            other = "video" if sampled == "action" else "action"
            if clean is None:                                 # at maximum noise: left out
                assert streams[other] is None and levels[other] is None, mode
            else:                                             # given clean, level 0, unchanged at every step
                assert torch.equal(levels[other], torch.zeros(3)), mode
        if mode == "forward":
            assert torch.allclose(calls[0][0], policy.normalizer.normalize("action", batch["action"].float()))
        if mode == "inverse":
            assert torch.equal(calls[0][2], den.video_tokens(future))
        if sampled in ("action", "both"):
            assert tuple(result["actions"].shape) == (3, 8, 2), mode
        if sampled in ("video", "both"):
            assert tuple(result["frames"].shape) == (3, 2, SIZE, SIZE, 3), mode
    den.joint = original


def test_policy_mode_is_the_dit_forward_over_the_action_tokens_alone(trained):
    trainer, _, _ = trained
    den = trainer.ema_policy().denoiser
    batch = {k: torch.as_tensor(v) for k, v in trainer.train_sampler.sample_batch(np.arange(5)).items()}
    with torch.no_grad():
        prepared = den.prepare(trainer.policy.condition(batch))
        x, t = torch.randn(5, 8, 2), torch.rand(5)
        joint = den.joint(x, t, None, None, prepared)["action"]
        plain = den(x, t, prepared)
        # a stream masked out of attention in training is the same as one left out
        video = torch.randn(5, 2 * den.video_tokens_per_frame, den.video_out.out_features)
        t_video = torch.rand(5)
        masked = den.joint(x, t, video, t_video, prepared, None, torch.zeros(5, dtype=torch.bool))["action"]
        # actions that do not read the frames (policy rows in training) are the policy mode too,
        # row by row, while the frames still read the actions
        reads = torch.tensor([True, False, True, False, False])
        one_way = den.joint(x, t, video, t_video, prepared, None, None, reads)
        both_ways = den.joint(x, t, video, t_video, prepared)
        alone = den.joint(None, None, video, t_video, prepared)["video"]
    assert torch.allclose(joint, plain, atol=1e-5)
    assert torch.allclose(masked, plain, atol=1e-5)
    assert torch.allclose(one_way["action"][~reads], plain[~reads], atol=1e-5)
    assert torch.allclose(one_way["action"][reads], both_ways["action"][reads], atol=1e-5)
    assert not torch.allclose(both_ways["action"][reads], plain[reads], atol=1e-4)
    assert torch.allclose(one_way["video"], both_ways["video"], atol=1e-5)
    assert not torch.allclose(one_way["video"], alone, atol=1e-4)


def test_action_free_samples_give_no_action_loss_and_no_action_gradient(trained):
    trainer, _, _ = trained
    policy = trainer.policy.train()
    sampler = trainer.train_sampler
    free = np.flatnonzero(~sampler.step_has_action[sampler.windows[:, 2]])[:16]
    labelled = np.flatnonzero(sampler.step_has_action[sampler.windows[:, 2]])[:16]
    den = policy.denoiser
    for rows, has_actions in ((free, False), (labelled, True)):
        policy.zero_grad(set_to_none=True)
        batch = {k: torch.as_tensor(v) for k, v in sampler.sample_batch(rows).items()}
        assert bool(batch["has_action"].any()) is has_actions
        loss, logs = policy.compute_loss(batch)
        loss.backward()
        action_grads = [p.grad for p in (*den.action_in.parameters(), *den.action_out.parameters())]
        action_grad = sum(0.0 if g is None else float(g.abs().sum()) for g in action_grads)
        video_grad = float(den.video_in.weight.grad.abs().sum())
        assert logs["loss/video"] > 0 and video_grad > 0
        assert (logs["joint/policy_rows"] > 0) is has_actions       # rows whose actions do not read the frames
        if has_actions:
            assert logs["loss/diffusion"] > 0 and action_grad > 0
        else:
            assert logs["loss/diffusion"] == 0.0 and action_grad == 0.0
    assert all(not p.requires_grad for p in den.autoencoder.parameters())     # frozen after its fit


def test_plan_mode_acts_with_actions_sampled_beside_imagined_frames(trained):
    trainer, _, _ = trained
    policy = trainer.ema_policy()
    den = policy.denoiser
    batch = {k: torch.as_tensor(v) for k, v in trainer.train_sampler.sample_batch(np.arange(4)).items()}
    noise = torch.randn(4, 8, 2, generator=torch.Generator().manual_seed(3))
    acting = policy.predict_action_chunks(batch, steps=3, noise=noise)               # policy mode
    assert torch.allclose(acting, predict(policy, batch, "policy", 3, noise=noise)["actions"], atol=1e-5)
    den.set_act_mode("plan")
    try:
        torch.manual_seed(0)
        planned = policy.predict_action_chunks(batch, steps=3, noise=noise)
        torch.manual_seed(0)                                 # the frames' starting noise: same draw
        expected = predict(policy, batch, "plan", 3, noise=noise)
        assert torch.equal(planned, expected["actions"])
        assert not torch.allclose(planned, acting, atol=1e-4)      # the actions read the imagined frames
        with pytest.raises(ValueError, match="plan mode"):
            policy.predict_action_chunks(batch, steps=3, init=acting)
    finally:
        den.set_act_mode("policy")
    with pytest.raises(ValueError, match="act mode must be one of"):
        den.set_act_mode("video")


def test_eval_joint_mode_settings_name_the_key(trained, capsys):
    from ditpolicy.cli import main

    _, run, _ = trained
    assert main(["eval", f"checkpoint={run}", "joint_mode=dream"]) == 2
    assert "joint_mode must be one of policy, plan, got 'dream'" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={run}", "joint_mode=plan", "backend=onnx"]) == 2
    assert "joint_mode=plan runs on backend=torch" in capsys.readouterr().err


def test_joint_checkpoint_round_trips_and_reports_held_out_prediction_error(trained, tmp_path):
    from ditpolicy.policies import Policy
    from ditpolicy.policies.world_model_eval import evaluate_checkpoint, format_report, held_out_mask

    trainer, run, _ = trained
    policy = Policy.from_checkpoint(run, device="cpu")
    ema = trainer.ema_policy()
    for name, value in ema.state_dict().items():           # autoencoder and latent statistics included
        assert torch.equal(value, policy.state_dict()[name]), name
    assert float(policy.denoiser.latent_std.min()) > 0 and not torch.equal(policy.denoiser.latent_std,
                                                                            torch.ones_like(policy.denoiser.latent_std))
    report = evaluate_checkpoint(policy, run, tmp_path, windows=12, steps=2)
    assert report["held_out"] and report["windows"] == 12
    for name in ("autoencoder", "video", "forward", "plan"):
        assert np.isfinite(report[name]["psnr"]) and report[name]["mse"] > 0
    for name in ("inverse", "policy", "plan"):
        assert 0 < report[name]["action_mse"] < 10
    store = DemoStore.open(report["store"])
    held_out, _ = held_out_mask(store, trainer.cfg)                       # the run's own validation episodes
    trained_on = np.unique(np.searchsorted(store.episode_ends, trainer.train_sampler.windows[:, 2], side="right"))
    assert held_out.any() and not held_out[trained_on].any()
    assert (tmp_path / "world_model.png").stat().st_size > 1000
    assert "forward dynamics" in format_report(report)


def test_bad_joint_settings_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="future_key='rgb_wrist'"):
        JointDenoiser(2, 8, 32, {"rgb_cam": [32, 32, 3], "state": [4]}, 2, 2, 4.0, 0.0, "rgb_wrist", None, 8, 2,
                      {"widths": [8, 16], "steps": 1, "batch_size": 1, "lr": 1e-3, "frames": 1}, True, 0.2, 0.1)
    with pytest.raises(ValueError, match="patch=3 does not divide"):
        JointDenoiser(2, 8, 32, {"rgb_cam": [32, 32, 3]}, 2, 2, 4.0, 0.0, None, None, 8, 3,
                      {"widths": [8, 16], "steps": 1, "batch_size": 1, "lr": 1e-3, "frames": 1}, True, 0.2, 0.1)
    with pytest.raises(ValueError, match="needs a joint video-action policy"):
        predict(type("P", (), {"denoiser": torch.nn.Linear(1, 1), "spec": type("S", (), {"denoiser": {"name": "dit"}})})(),
                {}, "video")


def test_collect_action_free_episodes_keep_frames_without_actions(tmp_path):
    from ditpolicy.cli import main as cli

    out = tmp_path / "reach.zarr"
    common = ["collect", "task=reach", f"out={out}", "env.cameras=[corner]", "env.image_size=32"]
    assert cli([*common, "episodes=1"]) == 0
    assert cli([*common, "episodes=2", "action_free=true"]) == 0
    store = DemoStore.open(out)
    assert store.has_action.tolist() == [True, False]
    second = store.episode(1)
    assert not second["action"].any() and second["rgb_corner"].shape[1:] == (32, 32, 3)
    assert second["rgb_corner"].std() > 0 and store.seeds[1] > store.seeds[0]
