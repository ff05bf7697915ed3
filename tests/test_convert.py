"""Converters from LIBERO / robomimic HDF5, CALVIN split folders and LeRobot datasets: every frame, action and
annotation of the official layouts (official_layouts.py) arrives unchanged in the store,
a killed conversion resumes without duplicates, bad input is named, and a converted store trains."""

import numpy as np
import pytest
from helpers import TINY_POLICY
from official_layouts import write_calvin_split, write_lerobot_dataset, write_libero_hdf5, write_robomimic_hdf5

from ditpolicy.cli import main as cli
from ditpolicy.config import compose
from ditpolicy.datasets import DemoStore
from ditpolicy.datasets.convert import convert
from ditpolicy.datasets.convert.calvin import cuts
from ditpolicy.policies.train import Trainer

LIBERO_STATE = ("ee_pos", "ee_ori", "gripper_states", "joint_states")
ROBOMIMIC_STATE = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")


def libero_suite(folder, lengths=((5, 7, 6), (4, 8))):
    folder.mkdir()
    files = [("pick_up_the_alphabet_soup_and_place_it_in_the_basket", "pick up the alphabet soup and place it in "
              "the basket"), ("KITCHEN_SCENE3_turn_on_the_stove", None)]
    return {task: write_libero_hdf5(folder / f"{task}_demo.hdf5", text, list(n), seed=i)
            for i, ((task, text), n) in enumerate(zip(files, lengths))}


def assert_hdf5_round_trip(store, task, demos, state_keys, images, flip):
    episodes = [i for i in range(store.n_episodes) if store.task_name(i) == task]
    assert len(episodes) == len(demos)
    for index, demo in zip(episodes, demos):
        got = store.episode(index)
        np.testing.assert_array_equal(got["action"], demo["actions"].astype(np.float32))
        state = np.concatenate([demo["obs"][k] for k in state_keys], axis=1).astype(np.float32)
        np.testing.assert_array_equal(got["state"], state)
        for source, key in images.items():
            np.testing.assert_array_equal(got[key], flip(demo["obs"][source]))


def test_libero_files_arrive_upright_with_their_instructions(tmp_path):
    suite = libero_suite(tmp_path / "libero_object")
    counts = convert("libero", tmp_path / "libero_object", tmp_path / "store.zarr", progress=False)
    assert counts == {"files": 2, "episodes": 5, "skipped": 0, "frames": 30}
    store = DemoStore.open(tmp_path / "store.zarr")
    for task, demos in suite.items():
        assert_hdf5_round_trip(store, task, demos, LIBERO_STATE,
                               {"agentview_rgb": "rgb_agentview", "eye_in_hand_rgb": "rgb_eye_in_hand"},
                               lambda frames: frames[:, ::-1, ::-1])
    instructions = {store.task_name(i): store.instruction(i) for i in range(store.n_episodes)}
    assert instructions == {"pick_up_the_alphabet_soup_and_place_it_in_the_basket":
                            "pick up the alphabet soup and place it in the basket",
                            "KITCHEN_SCENE3_turn_on_the_stove": "turn on the stove"}   # from problem_info / the name
    assert store.stats_status == "current"


def test_robomimic_keeps_its_upright_images_and_demo_order(tmp_path):
    lengths = [4, 6, 5, 3, 4, 5, 6, 4, 5, 3, 7]                   # demo_10 sorts after demo_9
    demos = write_robomimic_hdf5(tmp_path / "lift_ph.hdf5", lengths)
    code = cli(["convert", "robomimic", str(tmp_path / "lift_ph.hdf5"), str(tmp_path / "store.zarr"), "progress=false"])
    assert code == 0
    store = DemoStore.open(tmp_path / "store.zarr")
    assert list(store.episode_lengths) == lengths
    assert_hdf5_round_trip(store, "lift_ph", demos, ROBOMIMIC_STATE,
                           {"agentview_image": "rgb_agentview", "robot0_eye_in_hand_image": "rgb_eye_in_hand"},
                           lambda frames: frames)


def test_a_killed_hdf5_conversion_resumes_without_duplicates(tmp_path, monkeypatch):
    suite = libero_suite(tmp_path / "suite")
    from ditpolicy.datasets.convert import hdf5_demos

    real, calls = hdf5_demos.read_demo, []

    def dies_on_the_fourth(*args):
        calls.append(args[2])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(hdf5_demos, "read_demo", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        convert("libero", tmp_path / "suite", tmp_path / "store.zarr", progress=False)
    assert DemoStore.open(tmp_path / "store.zarr").n_episodes == 3
    monkeypatch.setattr(hdf5_demos, "read_demo", real)
    counts = convert("libero", tmp_path / "suite", tmp_path / "store.zarr", progress=False)
    assert counts["skipped"] == 3 and counts["episodes"] == 2
    store = DemoStore.open(tmp_path / "store.zarr")
    for task, demos in suite.items():
        assert_hdf5_round_trip(store, task, demos, LIBERO_STATE, {"agentview_rgb": "rgb_agentview"},
                               lambda frames: frames[:, ::-1, ::-1])
    assert convert("libero", tmp_path / "suite", tmp_path / "store.zarr", progress=False)["episodes"] == 0


def test_bad_hdf5_input_is_named_and_writes_nothing(tmp_path):
    import h5py

    write_libero_hdf5(tmp_path / "task_demo.hdf5", "do it", [4])
    with h5py.File(tmp_path / "task_demo.hdf5", "a") as f:
        del f["data/demo_0/obs/gripper_states"]
    with pytest.raises(ValueError, match=r"task_demo.hdf5: data/demo_0/obs has no \['gripper_states'\]"):
        convert("libero", tmp_path / "task_demo.hdf5", tmp_path / "store.zarr", progress=False)
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("meta")
    with pytest.raises(ValueError, match="empty.hdf5: no 'data' group"):
        convert("robomimic", tmp_path / "empty.hdf5", tmp_path / "other.zarr", progress=False)
    with pytest.raises(ValueError, match="flip must be one of"):
        convert("libero", tmp_path / "task_demo.hdf5", tmp_path / "store.zarr", flip="sideways", progress=False)
    assert DemoStore.open(tmp_path / "store.zarr").n_episodes == 0
    assert cli(["convert", "lerobotx", str(tmp_path), str(tmp_path / "x.zarr")]) == 2


CALVIN_SEQUENCES = [(100, 129), (500, 511)]
CALVIN_ANNOTATIONS = [(102, 111, "open the drawer", "open_drawer"), (108, 121, "push the red block left",
                                                                     "push_red_block_left"),
                      (500, 505, "turn on the led", "turn_on_led"), (506, 512, "lift the pink block",
                                                                     "lift_pink_block_table")]


def test_calvin_split_round_trips_with_language_segments(tmp_path):
    split = tmp_path / "task_D_D" / "training"
    frames = write_calvin_split(split, CALVIN_SEQUENCES, CALVIN_ANNOTATIONS)
    counts = convert("calvin", split, tmp_path / "store.zarr", max_episode_steps=8, progress=False)
    # 100..129 cut every 8 frames, but not inside the windows 102-111 and 108-121: [100, 121], then 122-129;
    # 500..511 not inside 506-511: one piece
    assert counts["episodes"] == 3 and counts["frames"] == 42 and counts["segments"] == 4
    store = DemoStore.open(tmp_path / "store.zarr")
    starts = [100, 122, 500]
    assert list(store.episode_lengths) == [22, 8, 12]
    for episode, first in enumerate(starts):
        got = store.episode(episode)
        for t in range(len(got["action"])):
            frame = frames[first + t]
            np.testing.assert_array_equal(got["action"][t], frame["rel_actions"].astype(np.float32))
            np.testing.assert_array_equal(got["action_abs"][t], frame["actions"].astype(np.float32))
            np.testing.assert_array_equal(got["state"][t], frame["robot_obs"].astype(np.float32))
            np.testing.assert_array_equal(got["scene_obs"][t], frame["scene_obs"].astype(np.float32))
            np.testing.assert_array_equal(got["rgb_static"][t], frame["rgb_static"])
            np.testing.assert_array_equal(got["rgb_gripper"][t], frame["rgb_gripper"])
    assert store.task_name(0) == "calvin/task_D_D/training"
    segments = [(s.start, s.end, s.text) for s in store.segments]
    # global store steps: episode 0 starts at 0, episode 2 (frame 500) at 30
    # the last window ends one frame past its sequence (511): it is cut at the sequence's end
    assert segments == [(2, 12, "open the drawer"), (8, 22, "push the red block left"), (30, 36, "turn on the led"),
                        (36, 42, "lift the pink block")]


def test_calvin_cuts_never_split_a_window_and_cover_every_frame():
    rng = np.random.default_rng(0)
    for _ in range(200):
        start, end = 0, int(rng.integers(1, 300))
        windows = [tuple(sorted(rng.integers(0, end + 1, 2))) for _ in range(rng.integers(0, 6))]
        pieces = cuts(start, end, windows, int(rng.integers(1, 50)))
        assert pieces[0][0] == start and pieces[-1][1] == end
        assert all(b[0] == a[1] + 1 for a, b in zip(pieces, pieces[1:]))
        for s, e in windows:
            assert any(first <= s and e <= last for first, last in pieces)


def test_a_killed_calvin_conversion_resumes_and_bad_splits_are_named(tmp_path, monkeypatch):
    split = tmp_path / "split"
    write_calvin_split(split, CALVIN_SEQUENCES, CALVIN_ANNOTATIONS)
    from ditpolicy.datasets.convert import calvin

    real = calvin.read_frames
    monkeypatch.setattr(calvin, "read_frames", lambda s, first, *a: (_ for _ in ()).throw(KeyboardInterrupt)
                        if first == 500 else real(s, first, *a))
    with pytest.raises(KeyboardInterrupt):
        convert("calvin", split, tmp_path / "store.zarr", max_episode_steps=8, progress=False)
    assert DemoStore.open(tmp_path / "store.zarr").n_episodes == 2
    monkeypatch.setattr(calvin, "read_frames", real)
    counts = convert("calvin", split, tmp_path / "store.zarr", max_episode_steps=8, progress=False)
    assert counts["skipped"] == 2 and counts["episodes"] == 1
    assert list(DemoStore.open(tmp_path / "store.zarr").episode_lengths) == [22, 8, 12]
    (split / "episode_0000505.npz").unlink()
    with pytest.raises(FileNotFoundError, match="episode_0000505.npz: frame 505"):
        convert("calvin", split, tmp_path / "again.zarr", progress=False)
    with pytest.raises(FileNotFoundError, match="ep_start_end_ids.npy: missing"):
        convert("calvin", tmp_path, tmp_path / "again.zarr", progress=False)


def test_a_converted_store_trains(tmp_path):
    libero_suite(tmp_path / "suite", lengths=((12, 14, 12), (12, 13)))
    convert("libero", tmp_path / "suite", tmp_path / "store.zarr", progress=False)
    cfg = compose("train", [f"dataset.path={tmp_path / 'store.zarr'}", f"run_dir={tmp_path / 'run'}", *TINY_POLICY,
                            "dataset.obs_keys=[state,rgb_agentview]", "train.steps=4", "train.save_every=4",
                            "policy.goals=[task]"])
    trainer = Trainer(cfg)
    trainer.run()
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()
    assert trainer.policy.spec.action_dim == 7 and sorted(trainer.policy.spec.tasks) == sorted(
        ["pick_up_the_alphabet_soup_and_place_it_in_the_basket", "KITCHEN_SCENE3_turn_on_the_stove"])


def decoded(path, height, width):
    """Every frame of an mp4, by ffmpeg straight to raw RGB: (N, H, W, 3)."""
    import subprocess

    import imageio_ffmpeg

    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


LEROBOT_LENGTHS = [7, 9, 6, 8]


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_lerobot_datasets_round_trip_frame_for_frame(tmp_path, version):
    root = tmp_path / "so100_pick"
    episodes = write_lerobot_dataset(root, LEROBOT_LENGTHS, ["pick the cube", "place the cube"], version=version)
    counts = convert("lerobot", root, tmp_path / "store.zarr", progress=False)
    assert counts == {"version": version, "episodes": 4, "skipped": 0, "frames": 30}
    store = DemoStore.open(tmp_path / "store.zarr")
    assert list(store.episode_lengths) == LEROBOT_LENGTHS
    if version == "v2.1":
        videos = {cam: np.concatenate([decoded(root / f"videos/chunk-000/observation.images.{cam}/"
                                               f"episode_{i:06d}.mp4", 48, 64) for i in range(4)])
                  for cam in ("top", "wrist")}
    else:                                        # episodes 0-2 share file-000, episode 3 is in file-001
        videos = {cam: np.concatenate([decoded(root / f"videos/observation.images.{cam}/chunk-000/file-{f:03d}.mp4",
                                               48, 64) for f in range(2)]) for cam in ("top", "wrist")}
    for i, episode in enumerate(episodes):
        got = store.episode(i)
        np.testing.assert_array_equal(got["state"], episode["state"])
        np.testing.assert_array_equal(got["action"], episode["action"])
        span = slice(episode["start"], episode["start"] + len(episode["action"]))
        for cam in ("top", "wrist"):
            np.testing.assert_array_equal(got[f"rgb_{cam}"], videos[cam][span])           # the decoder's frames, in order
            error = np.abs(got[f"rgb_{cam}"].astype(int) - episode["frames"][cam]).mean()
            assert error < 6, f"episode {i} {cam}: mean error {error:.1f} against the encoded frames"
        assert store.instruction(i) == episode["task"] and store.task_name(i) == "lerobot/so100_pick"


def test_a_killed_lerobot_conversion_resumes_and_bad_datasets_are_named(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    write_lerobot_dataset(root, LEROBOT_LENGTHS, ["pick the cube"], version="v3.0")
    convert("lerobot", root, tmp_path / "whole.zarr", progress=False)
    from ditpolicy.datasets.convert import lerobot

    real = lerobot.read_rows
    monkeypatch.setattr(lerobot, "read_rows", lambda episode, *a: (_ for _ in ()).throw(KeyboardInterrupt)
                        if episode.index == 2 else real(episode, *a))
    with pytest.raises(KeyboardInterrupt):
        convert("lerobot", root, tmp_path / "store.zarr", progress=False)
    assert DemoStore.open(tmp_path / "store.zarr").n_episodes == 2
    monkeypatch.setattr(lerobot, "read_rows", real)
    assert convert("lerobot", root, tmp_path / "store.zarr", progress=False)["skipped"] == 2
    whole, resumed = DemoStore.open(tmp_path / "whole.zarr"), DemoStore.open(tmp_path / "store.zarr")
    for i in range(4):                           # episode 2 starts mid-file: the stream skips to its frames
        a, b = whole.episode(i), resumed.episode(i)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    (root / "videos/observation.images.top/chunk-000/file-001.mp4").unlink()
    with pytest.raises(FileNotFoundError, match="file-001.mp4: video file listed by the dataset is missing"):
        convert("lerobot", root, tmp_path / "again.zarr", progress=False)
    with pytest.raises(FileNotFoundError, match="info.json: missing"):
        convert("lerobot", tmp_path, tmp_path / "again.zarr", progress=False)
