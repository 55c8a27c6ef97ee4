"""The vector recorder's step history is an optimisation: it must cut exactly the segments that
gathering each env's steps one by one would, whatever the episode lengths and however often the
history's arrays are compacted or grown."""

from __future__ import annotations

import numpy as np
import pytest
from prefloop.envs import EnvSpec, SegmentBuffer, VecSegmentRecorder, make_env
from prefloop.envs import recorder as recorder_module
from prefloop.envs.segments import cut_segments
from prefloop.types import Segment
from stable_baselines3.common.vec_env import DummyVecEnv


class _ListRecorder:
    """Reference: each env's episode kept as Python lists of its own steps, cut with the same
    rules and random streams as ``VecSegmentRecorder`` (episode ends first, then running episodes
    with ``2 L`` uncut steps, each in env order)."""

    def __init__(self, n_envs: int, segment_length: int, seed: int):
        self.length = segment_length
        self.rngs = np.random.default_rng(seed).spawn(n_envs)
        self.steps: list[list[tuple[np.ndarray, np.ndarray, float]]] = [[] for _ in range(n_envs)]
        self.cut_until = [0] * n_envs
        self.seeds: list[int | None] = [None] * n_envs
        self.segments: list[Segment] = []
        self.num_timesteps = 0

    def step(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray, infos: list, reset_infos: list) -> None:
        self.num_timesteps += len(self.steps)
        for env, steps in enumerate(self.steps):
            steps.append((obs[env], actions[env], float(rewards[env])))
        for env in np.flatnonzero(dones).tolist():
            self.cut(env, terminated=not infos[env].get("TimeLimit.truncated", False))
            self.steps[env], self.cut_until[env], self.seeds[env] = [], 0, reset_infos[env].get("episode_seed")
        for env, steps in enumerate(self.steps):
            if len(steps) - self.cut_until[env] >= 2 * self.length:
                self.cut(env, terminated=False)

    def cut(self, env: int, terminated: bool) -> None:
        steps, start = self.steps[env], self.cut_until[env]
        if self.seeds[env] is None or not steps:
            return
        self.segments += cut_segments(
            np.stack([s[0] for s in steps[start:]]), np.stack([s[1] for s in steps]),
            np.array([s[2] for s in steps[start:]], dtype=np.float32),
            terminated=terminated, episode_seed=self.seeds[env], segment_length=self.length,
            rng=self.rngs[env], env_step=self.num_timesteps, from_step=start,
        )
        self.cut_until[env] = max(start, len(steps) - self.length + 1)


def _same(a: Segment, b: Segment) -> bool:
    arrays = ("obs", "actions", "true_rewards", "episode_actions")
    fields = ("n_valid", "terminated", "episode_seed", "start_step", "env_step")
    return all(getattr(a, f).dtype == getattr(b, f).dtype and np.array_equal(getattr(a, f), getattr(b, f)) for f in arrays) and all(
        getattr(a, f) == getattr(b, f) for f in fields
    )


@pytest.mark.parametrize(("env_id", "n_envs", "length", "capacity"), [
    ("CartPole-v1", 4, 8, 8),  # short episodes that end at different steps
    ("Pendulum-v1", 3, 10, 4),  # 200-step episodes cut while they run; arrays grow from 4 rows
    ("Acrobot-v1", 2, 25, 256),
])
def test_vec_recorder_cuts_the_segments_of_a_step_by_step_recorder(
    monkeypatch: pytest.MonkeyPatch, env_id: str, n_envs: int, length: int, capacity: int
) -> None:
    monkeypatch.setattr(recorder_module.StepHistory.__init__, "__defaults__", (capacity,))
    spec = EnvSpec(env_id)
    venv = DummyVecEnv([lambda i=i: make_env(spec, seed=i) for i in range(n_envs)])
    buffer = SegmentBuffer(100_000)
    recorder = VecSegmentRecorder(venv, buffer, segment_length=length, seed=3)
    reference = _ListRecorder(n_envs, length, seed=3)
    obs = recorder.reset()
    reference.seeds = [venv.reset_infos[i].get("episode_seed") for i in range(n_envs)]
    venv.action_space.seed(0)
    for _ in range(700):
        actions = np.stack([venv.action_space.sample() for _ in range(n_envs)])
        next_obs, rewards, dones, infos = recorder.step(actions)
        reference.step(obs, actions, rewards, dones, infos, venv.reset_infos)
        obs = next_obs
    assert len(buffer) > 20 and len(buffer) == len(reference.segments)
    assert all(_same(a, b) for a, b in zip(buffer.recent(), reference.segments))
    assert recorder.history_steps <= 700


def test_segments_do_not_share_memory_with_the_history() -> None:
    """The history's rows are reused: a segment that kept a view of them would change later."""
    spec = EnvSpec("CartPole-v1")
    buffer = SegmentBuffer(10_000)
    recorder = VecSegmentRecorder(DummyVecEnv([lambda: make_env(spec, seed=0)] * 2), buffer, segment_length=5, seed=0)
    recorder.reset()
    recorder.action_space.seed(0)
    for _ in range(50):
        recorder.step(np.stack([recorder.action_space.sample() for _ in range(2)]))
    first = buffer.recent()
    copies = [(s.obs.copy(), s.actions.copy(), s.true_rewards.copy(), s.episode_actions.copy()) for s in first]
    for _ in range(600):
        recorder.step(np.stack([recorder.action_space.sample() for _ in range(2)]))
    history = recorder._history
    for segment, saved in zip(first, copies):
        arrays = (segment.obs, segment.actions, segment.true_rewards, segment.episode_actions)
        assert all(np.array_equal(a, b) for a, b in zip(arrays, saved))
        assert not any(np.shares_memory(a, h) for a in arrays for h in (history._obs, history._actions, history._rewards))


def test_step_history_keeps_what_is_needed_across_compaction_and_growth() -> None:
    history = recorder_module.StepHistory(capacity=2)
    rng = np.random.default_rng(0)
    rows = [(rng.random((3, 2)), rng.integers(0, 4, size=3), rng.random(3)) for _ in range(40)]
    for index, row in enumerate(rows):
        assert history.append(*row) == index + 1
        if index % 7 == 6:
            history.drop_before(index - 3)  # keep the last four steps
    obs, rewards = history.column(1, 37, 40)
    actions, _ = history.column(1, 37, 40, actions=True)
    np.testing.assert_array_equal(obs, np.stack([r[0][1] for r in rows[37:]]).astype(np.float32))
    np.testing.assert_array_equal(actions, np.array([r[1][1] for r in rows[37:]]))
    np.testing.assert_array_equal(rewards, np.array([r[2][1] for r in rows[37:]], dtype=np.float32))
    assert obs.dtype == np.float32 and actions.dtype == np.int64
    with pytest.raises(IndexError):
        history.column(0, 30, 40)


def test_an_episode_that_does_not_end_is_named_once(monkeypatch, caplog) -> None:
    # An env with no time limit that never ends (a user's, unregistered with max_episode_steps):
    # every segment kept every action since the reset, 16 KB per segment after 2 000 steps and
    # growing, with no word of it.
    monkeypatch.setattr(recorder_module, "LONG_EPISODE_STEPS", 200)
    venv = DummyVecEnv([lambda: make_env(EnvSpec("Pendulum-v1", {"max_episode_steps": 10**6}), seed=0)] * 2)
    recorder = VecSegmentRecorder(venv, SegmentBuffer(100), segment_length=10, seed=0)
    recorder.reset()
    with caplog.at_level("WARNING", logger="prefloop"):
        for _ in range(190):
            recorder.step(np.zeros((2, 1), dtype=np.float32))
        assert "without ending" not in caplog.text
        for _ in range(200):
            recorder.step(np.zeros((2, 1), dtype=np.float32))
    assert caplog.text.count("steps without ending") == 1  # looked at when segments are cut: 200-220 steps
    assert "max_episode_steps" in caplog.text


def test_episodes_cut_off_before_a_segment_fits_are_noted_for_the_error() -> None:
    # A user's env truncating its own 40-step episodes, with no render_fps: 50-step segments, none
    # ever cut, and the first round said "use fewer --labels or more --steps".
    venv = DummyVecEnv([lambda: make_env(EnvSpec("Pendulum-v1", {"max_episode_steps": 8}), seed=0)] * 2)
    buffer = SegmentBuffer(100)
    recorder = VecSegmentRecorder(venv, buffer, segment_length=10, seed=0)
    recorder.reset()
    for _ in range(40):
        recorder.step(np.zeros((2, 1), dtype=np.float32))
    assert len(buffer) == 0 and buffer.longest_uncut_episode == 8
    long_enough = SegmentBuffer(100)
    recorder = VecSegmentRecorder(venv, long_enough, segment_length=4, seed=0)
    recorder.reset()
    for _ in range(40):
        recorder.step(np.zeros((2, 1), dtype=np.float32))
    assert len(long_enough) > 0 and long_enough.longest_uncut_episode == 0


def test_a_first_round_with_no_segment_says_only_why(tmp_path) -> None:
    from prefloop.reward_models import build_reward_model
    from prefloop.store import PreferenceStore, sqlite_url
    from prefloop.training.config import TrainConfig
    from prefloop.training.learner import PreferenceLearner
    from prefloop.training.query import NotEnoughSegmentsError

    config = TrainConfig(env_id="Pendulum-v1", run_dir=tmp_path, labels=30, steps=6_000, segment_length=50).resolve()
    buffer = SegmentBuffer(100)
    buffer.longest_uncut_episode = 40
    venv = make_env(EnvSpec("Pendulum-v1"))
    with PreferenceStore(sqlite_url(tmp_path / "prefs.sqlite"), run_name="r") as store:
        learner = PreferenceLearner(config, store, build_reward_model(venv.observation_space, venv.action_space, config.reward_model),
                                    buffer, None)
        with pytest.raises(NotEnoughSegmentsError) as info:
            learner.ask(8, env_step=600)
    assert str(info.value).startswith("label round at env step 600 found no segment. Episodes were cut off (truncated) after at most 40")
    assert "fewer labels" not in str(info.value)
