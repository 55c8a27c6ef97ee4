"""DeepMind Control tasks (dm_control through shimmy): ids and short names, a short preference run
end to end on walker_walk, and clips that render headless and not black."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# prefloop.envs first: it sets MUJOCO_GL=egl before anything imports mujoco
from prefloop.envs import EnvSpec, SegmentRenderer
from prefloop.envs.dmc import INSTALL_HINT, SHORT_NAMES, dmc_available
from prefloop.envs.presets import DMC_ENVS, default_preset
from prefloop.reward_models import RewardModelConfig
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.config import TrainConfig
from prefloop.training.loop import train
from prefloop.training.rundir import RunDir

needs_dmc = pytest.mark.skipif(
    not dmc_available(), reason=f"{INSTALL_HINT} (not in the test extra: it needs mujoco<4)"
)


def test_short_names_and_shimmy_ids_share_one_preset_with_the_papers_settings() -> None:
    for short, full in SHORT_NAMES.items():
        assert full in DMC_ENVS
        a, b = default_preset(short), default_preset(full)
        assert (a.segment_length, a.total_steps, a.algo, a.label_budgets, a.unsupervised_steps) == (
            b.segment_length, b.total_steps, b.algo, b.label_budgets, b.unsupervised_steps)
        assert a.algo == "sac" and a.segment_length == 50 and 100 in a.label_budgets and a.unsupervised_steps == 9_000
        resolved = TrainConfig(env_id=short, run_dir=Path("unused")).resolve()
        assert resolved.algo == "sac" and resolved.algo_kwargs["learning_rate"] == 5e-4


@pytest.mark.parametrize("env_id", ["walker_walk", "dm_control/walker-walk-v0"])
def test_without_the_extra_train_says_in_one_line_what_to_install(env_id: str, tmp_path: Path) -> None:
    # A fresh interpreter in which dm_control and shimmy cannot be imported (None in sys.modules).
    code = (
        "import sys\n"
        "sys.modules['shimmy'] = sys.modules['dm_control'] = None\n"
        "from prefloop.cli.main import main\n"
        f"sys.exit(main(['train', '--env', {env_id!r}, '--run-dir', {str(tmp_path / 'run')!r}, '--no-progress']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'prefloop[dmc]'" in lines[0], lines
    assert "Did you mean" not in lines[0]  # the short names need the extra just the same
    assert not (tmp_path / "run").exists()


@needs_dmc
def test_shimmy_ids_register_themselves_in_a_fresh_process() -> None:
    # A fresh interpreter: nothing has imported shimmy, as in the clip worker or a resumed run.
    code = (
        "from prefloop.envs import EnvSpec, make_env\n"
        "import sys\n"
        "assert 'shimmy' not in sys.modules, 'importing prefloop.envs must not load dm_control'\n"
        "env = make_env(EnvSpec('dm_control/cheetah-run-v0'), seed=0)\n"
        "obs, _ = env.reset()\n"
        "print(sorted(obs), env.action_space.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MUJOCO_GL": "egl"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "['position', 'velocity'] (6,)" in out.stdout


def _frames_show_a_scene(frames: np.ndarray) -> None:
    assert frames.dtype == np.uint8 and frames.shape[1:] == (240, 320, 3)
    assert frames.reshape(len(frames), -1).max(axis=1).min() > 0, "a frame came out all black"
    assert frames.std() > 5, "frames show a flat colour, not a scene"


@needs_dmc
@pytest.mark.slow
def test_walker_walk_runs_a_short_preference_loop_and_its_clips_render(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = TrainConfig(
        env_id="walker_walk", run_dir=tmp_path / "run", teacher="oracle", labels=12, steps=1_500,
        unsupervised_steps=500, seed=0, progress_bar=False, eval_episodes=1,
        algo_kwargs={"learning_starts": 200, "batch_size": 64},
        reward_model=RewardModelConfig(epochs=5),
    )
    result = train(config)
    assert result.labels_used == 12
    assert np.isfinite(result.eval_return_mean) and 0 <= result.eval_return_mean <= 1000  # DMC returns lie in [0, 1000]

    with PreferenceStore(sqlite_url(RunDir(config.run_dir).store_path), run_name="run") as store:
        pairs = store.labeled_pairs()
    assert len(pairs) == 12
    segment = pairs[0].left
    assert segment.obs.shape == (50, 24)  # height (1) + orientations (14) + velocity (9), flattened

    spec = EnvSpec("walker_walk")
    # Two renderers one after the other, then two alive at once with the first one dropped without
    # close() and collected while the second's GL context exists: no frame may come out black.
    for _ in range(2):
        with SegmentRenderer(spec) as renderer:
            frames = renderer.render(segment)  # also replays and checks every observation
        _frames_show_a_scene(frames)
        assert len(frames) == 51
    first = SegmentRenderer(spec)
    first.render(pairs[1].left)
    second = SegmentRenderer(spec)
    del first
    gc.collect()
    try:
        _frames_show_a_scene(second.render(pairs[1].right))
    finally:
        second.close()
