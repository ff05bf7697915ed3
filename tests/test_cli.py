"""The ditpolicy command, run as a real subprocess."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "ditpolicy", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_verbs():
    out = run("--help")
    assert out.returncode == 0
    for verb in ("collect", "info", "train", "eval", "demo"):
        assert f"  {verb}" in out.stdout


def test_unknown_verb_and_bad_override_fail_clearly():
    out = run("trian")
    assert out.returncode == 2 and "unknown verb 'trian'" in out.stderr
    out = run("collect", "epsiodes=3")
    assert out.returncode == 2 and "epsiodes" in out.stderr
    out = run("eval")
    assert out.returncode == 2 and "missing required setting(s) checkpoint; pass checkpoint=..." in out.stderr
    out = run("train")
    assert out.returncode == 2 and "dataset.path" in out.stderr


def test_collect_then_info(tmp_path):
    store = tmp_path / "reach.zarr"
    out = run("collect", "task=reach", "episodes=2", f"out={store}", "env.cameras=[corner]", "env.image_size=32")
    assert out.returncode == 0, out.stderr
    assert "reach-v3" in out.stdout and "1.000" in out.stdout
    out = run("info", str(store))
    assert out.returncode == 0, out.stderr
    assert "episodes  2" in out.stdout
    assert "rgb_corner       (32, 32, 3)" in out.stdout
    assert "reach the goal position" in out.stdout


def test_info_on_a_missing_store_names_it(tmp_path):
    out = run("info", str(tmp_path / "none.zarr"))
    assert out.returncode == 1 and "none.zarr: no such store" in out.stderr
