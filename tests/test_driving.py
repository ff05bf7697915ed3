"""Highway driving in highway-env's real simulator: the plan follower, the scene vector, the
expert's plans, collection through the CLI, and a planner trained on the collected store."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("highway_env")

from ditpolicy.datasets import DemoStore  # noqa: E402
from ditpolicy.envs.driving import SCENE_DIM, DrivingEnv  # noqa: E402
from ditpolicy.envs.driving.expert import plans_from_trace  # noqa: E402
from ditpolicy.envs.driving.metrics import episode_scores, plan_diversity  # noqa: E402
from ditpolicy.envs.driving.scene import to_ego, to_world  # noqa: E402

TIMES = 0.5 * np.arange(1, 9)


def follow(env: DrivingEnv, world_path: np.ndarray) -> list[float]:
    """Drive along world waypoints (8, 2), replanning every 0.5 s with what is left of them
    (extended straight at the end); the position error after each 0.5 s."""
    errors = []
    for k in range(8):
        rest = world_path[k:]
        if k:
            step = world_path[-1] - world_path[-2]
            rest = np.concatenate([rest, world_path[-1] + step * np.arange(1, k + 1)[:, None]])
        env.step(to_ego(rest, env.ego.position, env.ego.heading).ravel())
        errors.append(float(np.linalg.norm(env.ego.position - world_path[k])))
    return errors


@pytest.fixture
def empty_road():
    env = DrivingEnv(vehicles=1, duration_s=20)
    env.reset(seed=0)
    yield env
    env.close()


def test_the_follower_keeps_a_straight_plan_and_a_speed_change(empty_road):
    env = empty_road
    start, heading, lane = env.ego.position.copy(), env.ego.heading, env.ego.lane_index
    assert env.ego.speed == pytest.approx(25.0)
    distance = 25 * TIMES + 0.5 * 2.0 * TIMES ** 2                  # speed up at 2 m/s^2
    path = to_world(np.stack([distance, np.zeros(8)], axis=1), start, heading)
    errors = follow(env, path)
    assert max(errors) < 0.6, errors
    assert env.ego.speed == pytest.approx(25 + 2 * 4.0, abs=1.0)
    assert env.ego.lane_index == lane and abs(to_ego(env.ego.position, start, heading)[1]) < 0.1


def test_the_follower_changes_lane(empty_road):
    env = empty_road
    start, heading = env.ego.position.copy(), env.ego.heading
    lane = env.ego.lane_index
    width = env.road.network.get_lane(lane).width_at(0)
    lateral = -width * (1 - np.cos(np.pi * np.minimum(TIMES, 3.0) / 3.0)) / 2     # one lane left (-y) in 3 s
    errors = follow(env, to_world(np.stack([25 * TIMES, lateral], axis=1), start, heading))
    assert max(errors) < 0.5, errors
    assert env.ego.lane_index[2] == lane[2] - 1
    assert abs(env.road.network.get_lane(env.ego.lane_index).local_coordinates(env.ego.position)[1]) < 0.3
    assert not env.ego.crashed and env.ego.on_road


def test_a_bad_plan_is_refused_before_it_moves_the_car(empty_road):
    before = empty_road.ego.position.copy()
    for plan in (np.zeros(15), np.full(16, np.nan)):
        with pytest.raises(ValueError, match="a plan is 16 finite numbers"):
            empty_road.step(plan)
    assert np.array_equal(empty_road.ego.position, before)
    with pytest.raises(ValueError, match="unknown driving task 'merge'"):
        DrivingEnv("merge")


def drive(env: DrivingEnv, world_path: np.ndarray) -> dict:
    """Follow a world path (as ``follow``) until it ends or the episode does; the episode's scores
    against a 100 m progress reference."""
    info = {"crashed": False}
    for k in range(8):
        rest = world_path[k:]
        if k:
            step = world_path[-1] - world_path[-2]
            rest = np.concatenate([rest, world_path[-1] + step * np.arange(1, k + 1)[:, None]])
        _, _, terminated, _, info = env.step(to_ego(rest, env.ego.position, env.ego.heading).ravel())
        if terminated:
            break
    return episode_scores(np.asarray(env.trace), env.safety, info["crashed"], 100.0, 0.1)


def test_scores_of_a_clean_drive_a_staged_collision_and_an_off_road_plan(empty_road):
    from highway_env.vehicle.kinematics import Vehicle

    env = empty_road
    start, heading = env.ego.position.copy(), env.ego.heading
    straight = to_world(np.stack([25 * TIMES, np.zeros(8)], axis=1), start, heading)
    clean = drive(env, straight)
    assert clean["no_collision"] == clean["drivable"] == clean["ttc"] == clean["comfort"] == 1.0
    assert clean["progress"] == pytest.approx(1.0) and clean["score"] == pytest.approx(1.0)
    assert clean["progress_m"] == pytest.approx(100, abs=1)

    env.reset(seed=0)
    start = env.ego.position.copy()
    parked = Vehicle(env.road, start + np.array([30.0, 0.0]), heading, 0.0)     # a stopped car 30 m ahead
    env.road.vehicles.append(parked)
    crash = drive(env, to_world(np.stack([25 * TIMES, np.zeros(8)], axis=1), start, heading))
    assert crash["no_collision"] == 0.0 and crash["score"] == 0.0 and env.ego.crashed
    assert crash["ttc"] == 0.0 and crash["min_ttc_s"] < 1.0

    env.reset(seed=0)
    start = env.ego.position.copy()
    off = drive(env, to_world(np.stack([20 * TIMES, 3.0 * TIMES], axis=1), start, heading))   # 12 m to the right
    assert env.ego.lane_index[2] == 2                                          # it started in the right lane
    assert off["drivable"] == 0.0 and off["score"] == 0.0 and off["no_collision"] == 1.0


def test_plan_diversity_is_zero_for_one_mode_and_grows_with_the_spread():
    plan = np.stack([25 * TIMES, np.zeros(8)], axis=1)
    assert plan_diversity(np.stack([plan, plan, plan])) == 0.0
    apart = np.stack([plan + [0, -2], plan + [0, 2]])                         # 4 m apart, 100 m travelled
    assert plan_diversity(apart) == pytest.approx(4 / np.hypot(100, 2), rel=1e-6)
    assert plan_diversity(np.stack([plan + [0, -4], plan + [0, 4]])) > plan_diversity(apart)


def test_the_scene_vector_holds_ego_lanes_and_nearest_vehicles():
    env = DrivingEnv(vehicles=15, duration_s=5)
    state = env.reset(seed=3)[0]["state"]
    ego = env.ego
    assert state.shape == (SCENE_DIM,) and state.dtype == np.float32
    assert state[0] == pytest.approx(ego.speed / 30) and state[2] == pytest.approx(1.0)      # aligned with lane
    agents = state[5:45].reshape(8, 5)
    present = agents[agents[:, 0] == 1]
    distances = np.hypot(present[:, 1] * 50, present[:, 2] * 10)
    assert len(present) > 0 and np.all(np.diff(distances) >= -1e-6)           # nearest first
    nearest = min(env.road.vehicles[1:], key=lambda v: np.linalg.norm(v.position - ego.position))
    assert present[0, 1] * 50 == pytest.approx(to_ego(nearest.position, ego.position, ego.heading)[0], abs=1e-3)
    lanes = state[45:].reshape(4, 2)
    assert lanes[:, 0].tolist() == [1, 1, 1, 0]                                # three lanes
    own = ego.lane_index[2]
    assert lanes[own, 1] == pytest.approx(0.0, abs=1e-6)                      # its own lane's centre
    assert np.diff(lanes[:3, 1]) == pytest.approx([0.4, 0.4], abs=1e-5)       # 4 m apart, lane 0 leftmost
    env.close()


def test_expert_plans_are_the_next_four_seconds_in_the_ego_frame():
    t = np.arange(12) * 0.5
    heading = 0.3
    poses = np.stack([10 + 20 * t * np.cos(heading), 5 + 20 * t * np.sin(heading), np.full(12, heading),
                      np.full(12, 20.0)], axis=1)
    plans = plans_from_trace(poses)
    assert plans.shape == (4, 16)
    expected = np.stack([20 * TIMES, np.zeros(8)], axis=1).ravel()
    assert np.allclose(plans, expected, atol=1e-4)
    assert plans_from_trace(poses[:8]).shape == (0, 16)


def test_collect_env_driving_writes_expert_plans_and_a_planner_trains_on_them(tmp_path):
    out = tmp_path / "highway.zarr"
    run = subprocess.run([sys.executable, "-m", "ditpolicy", "collect", "env=driving", "task=highway", "episodes=2",
                          "env.duration_s=8", "env.vehicles=10", f"out={out}"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "kept 2 of" in run.stdout
    store = DemoStore.open(out)
    assert store.n_episodes == 2 and store.tasks == ["highway"]
    episode = store.episode(0)
    assert episode["state"].shape == (9, SCENE_DIM) and episode["action"].shape == (9, 16)    # 17 poses in 8 s
    forward = episode["action"][:, 0::2]
    assert np.all(np.diff(forward, axis=1) > 0) and np.all(forward[:, 0] > 5)  # 8 waypoints, moving ahead
    again = subprocess.run([sys.executable, "-m", "ditpolicy", "collect", "env=driving", "task=highway",
                            "episodes=3", "env.duration_s=8", "env.vehicles=10", f"out={out}"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and DemoStore.open(out).n_episodes == 3
    assert list(DemoStore.open(out).seeds) == [0, 1, 2]                        # continued with the next seed
    train = subprocess.run([sys.executable, "-m", "ditpolicy", "train", f"dataset.path={out}",
                            f"run_dir={tmp_path / 'run'}", "policy.horizon=1", "policy.n_action_steps=1",
                            "policy/process=anchored", "policy.process.n_anchors=4", "policy.d_model=32",
                            "policy.denoiser.n_layers=1", "policy.denoiser.n_heads=2", "train.steps=3",
                            "train.batch_size=8", "train.progress=false", "train.val_every=0"],
                           capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    from ditpolicy.policies import Policy

    policy = Policy.from_checkpoint(tmp_path / "run", device="cpu")
    plan = policy.predict_chunk({"state": episode["state"][:policy.spec.n_obs]}, steps=2, task="highway")
    assert plan.shape == (1, 16) and np.all(np.isfinite(plan))
    evaluated = subprocess.run([sys.executable, "-m", "ditpolicy", "eval", "env=driving",
                                f"checkpoint={tmp_path / 'run'}", "episodes=2", "steps=2", "env.duration_s=4",
                                "env.vehicles=10"], capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "eval" / "result.json").read_text())
    assert result["planner"]["episodes"] == result["expert"]["episodes"] == 2
    assert [row["seed"] for row in result["per_episode"]] == [100000, 100001]               # held-out seeds
    assert result["expert"]["progress"] == 1.0 and result["planner"]["latency_ms"]["p50"] > 0
    assert 0 <= result["planner"]["score"] <= 1 and result["planner"]["diversity"] >= 0
    assert (tmp_path / "run" / "eval" / "videos" / "driving_seed100000.mp4").stat().st_size > 1000
    assert "IDM/MOBIL expert" in evaluated.stdout
