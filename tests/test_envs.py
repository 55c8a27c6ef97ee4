"""The Gymnasium side: seeding, segment cutting, recorders, the learned-reward wrappers, replay."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from prefloop.envs import (
    EnvSetupError,
    EnvSpec,
    EpisodeSeeder,
    EpisodeSegmenter,
    LearnedRewardWrapper,
    ReplayMismatchError,
    SegmentBuffer,
    SegmentRecorder,
    SegmentRenderer,
    VecLearnedReward,
    VecSegmentRecorder,
    check_can_render,
    check_spaces,
    make_env,
    render_segment,
)
from stable_baselines3.common.vec_env import DummyVecEnv


class SumReward:
    """A stand-in learned reward with a known formula: sum of observation entries + 1."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        self.calls += 1
        return (obs.reshape(len(obs), -1).sum(axis=1) + 1.0).astype(np.float32)


def random_vec(spec: EnvSpec, n_envs: int = 3, seed: int = 0) -> DummyVecEnv:
    return DummyVecEnv([lambda i=i: make_env(spec, seed=seed + i) for i in range(n_envs)])


def play(venv, steps: int, seed: int = 0) -> None:
    venv.action_space.seed(seed)
    venv.reset()
    for _ in range(steps):
        venv.step(np.stack([venv.action_space.sample() for _ in range(venv.num_envs)]))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_every_gym_wrapper_passes_check_env(env_id: str) -> None:
    spec = EnvSpec(env_id)
    check_env(make_env(spec, seed=0), skip_render_check=True)
    check_env(SegmentRecorder(make_env(spec, seed=0), SegmentBuffer(100), segment_length=10, seed=0), skip_render_check=True)
    check_env(LearnedRewardWrapper(make_env(spec, seed=0), SumReward()), skip_render_check=True)


def test_episode_seeder_gives_replayable_episodes() -> None:
    env = EpisodeSeeder(gym.make("CartPole-v1"), seed=3)
    obs_a, info_a = env.reset()
    obs_b, info_b = env.reset()
    assert info_a["episode_seed"] != info_b["episode_seed"]
    replay = gym.make("CartPole-v1")
    replay_obs, _ = replay.reset(seed=info_a["episode_seed"])
    np.testing.assert_array_equal(obs_a, replay_obs)
    # reset(seed=...) restarts the sequence of episode seeds
    _, again = env.reset(seed=3)
    assert again["episode_seed"] == info_a["episode_seed"]


def _segmenter_with_steps(n_steps: int, seg_len: int = 5) -> EpisodeSegmenter:
    segmenter = EpisodeSegmenter(seg_len, np.random.default_rng(0), segments_per_step=1.0)
    segmenter.start_episode(42)
    for t in range(n_steps):
        segmenter.add_step(np.array([t, t], dtype=np.float32), np.int64(t % 2), 1.0)
    return segmenter


def test_terminated_episode_segments_are_padded_with_the_absorbing_state() -> None:
    segments = _segmenter_with_steps(7).end_episode(terminated=True, env_step=7)
    assert segments, "a terminated episode gives segments"
    for seg in segments:
        assert seg.length == 5 and seg.obs.shape == (5, 2) and seg.actions.dtype == np.int64
        assert seg.n_valid == min(5, 7 - seg.start_step)
        assert seg.terminated == (seg.start_step + 5 >= 7)
        np.testing.assert_array_equal(seg.obs[seg.n_valid:], 0.0)
        np.testing.assert_array_equal(seg.true_rewards, seg.valid_mask)
        np.testing.assert_array_equal(seg.obs[: seg.n_valid, 0], np.arange(seg.start_step, seg.start_step + seg.n_valid))
        assert len(seg.episode_actions) == seg.start_step + seg.n_valid
        assert seg.episode_seed == 42


def test_truncated_episode_segments_lie_wholly_inside_the_episode() -> None:
    segments = _segmenter_with_steps(12).end_episode(terminated=False, env_step=12)
    assert segments
    assert all(seg.n_valid == 5 and not seg.terminated and seg.start_step + 5 <= 12 for seg in segments)
    # too short to hold one whole segment: nothing is cut rather than an invented tail
    assert _segmenter_with_steps(3).end_episode(terminated=False, env_step=3) == []


def test_segment_buffer_is_bounded_and_keeps_the_newest() -> None:
    buffer = SegmentBuffer(capacity=3)
    segs = _segmenter_with_steps(7).end_episode(terminated=True, env_step=7)
    buffer.extend(segs * 2)
    assert len(buffer) == 3 and buffer.total_added == 2 * len(segs)
    assert buffer.recent(1)[0] is segs[-1]


def test_vec_recorder_records_true_rewards_and_episode_seeds_that_replay() -> None:
    spec = EnvSpec("CartPole-v1")
    buffer = SegmentBuffer(1000)
    recorder = VecSegmentRecorder(random_vec(spec), buffer, segment_length=20, seed=0)
    play(recorder, 200)
    assert len(buffer) > 10
    seg = buffer.recent(1)[0]
    # CartPole pays 1 per step alive and the absorbing steps 0
    np.testing.assert_array_equal(seg.true_rewards, seg.valid_mask)
    frames = render_segment(spec, seg)  # replays the episode and checks every observation on the way
    assert frames.shape[0] == 21 and frames.dtype == np.uint8 and frames.ndim == 4
    assert frames.max() > 0, "frames must not be black"


def test_replay_detects_a_wrong_recording() -> None:
    spec = EnvSpec("CartPole-v1")
    buffer = SegmentBuffer(100)
    play(VecSegmentRecorder(random_vec(spec, 1), buffer, segment_length=10, seed=0), 100)
    seg = buffer.recent(1)[0]
    seg.episode_seed += 1
    with pytest.raises(ReplayMismatchError):
        render_segment(spec, seg)


def test_vec_learned_reward_replaces_reward_and_keeps_the_true_one_in_info() -> None:
    spec = EnvSpec("Pendulum-v1")
    reward = SumReward()
    venv = VecLearnedReward(random_vec(spec, 2), reward)
    obs = venv.reset()
    actions = np.stack([venv.action_space.sample() for _ in range(2)])
    next_obs, rewards, dones, infos = venv.step(actions)
    assert reward.calls == 1, "one batched call per vector step"
    np.testing.assert_allclose(rewards, obs.sum(axis=1) + 1.0, rtol=1e-6)
    assert rewards.dtype == np.float32 and rewards.shape == (2,)
    assert all(info["true_reward"] <= 0.0 for info in infos)  # Pendulum's own reward is never positive


def test_learned_episode_return_is_reported_at_episode_end() -> None:
    spec = EnvSpec("CartPole-v1")
    venv = VecLearnedReward(random_vec(spec, 1), SumReward())
    venv.reset()
    total = 0.0
    for _ in range(500):
        _, rewards, dones, infos = venv.step(np.array([0]))
        total += float(rewards[0])
        if dones[0]:
            assert infos[0]["learned_episode_return"] == pytest.approx(total, rel=1e-5)
            return
    pytest.fail("CartPole pushed left always should end within 500 steps")


def test_unknown_env_id_suggests_a_close_one() -> None:
    with pytest.raises(EnvSetupError, match="CartPole-v1"):
        make_env(EnvSpec("CartPole-v7"))


@pytest.mark.parametrize(
    ("observation_space", "named"),
    [
        (gym.spaces.Dict({"camera": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8), "a": gym.spaces.Box(0, 1, (2,))}), "'camera' is an image"),
        (gym.spaces.Text(4), "supported: Box, Discrete, MultiBinary, MultiDiscrete, and Dict or Tuple"),
        (gym.spaces.Dict({"arm": gym.spaces.Dict({"x.y": gym.spaces.Box(0, 1, (2,))})}), "keys with a dot \\('arm/x.y'\\)"),
    ],
)
def test_unsupported_spaces_are_refused_with_a_fix(observation_space: gym.Space, named: str) -> None:
    env_class = type("_Odd", (_DictObsEnv,), {"observation_space": observation_space})
    gym.register("prefloop-test/OddObs-v0", entry_point=env_class)
    try:
        with pytest.raises(EnvSetupError, match=named):
            make_env(EnvSpec("prefloop-test/OddObs-v0"))
        check_spaces(_DictObsEnv.observation_space, _DictObsEnv.action_space, "dict")  # vector leaves pass
    finally:
        gym.registry.pop("prefloop-test/OddObs-v0")


@pytest.mark.parametrize(
    ("observation_space", "action_space", "named"),
    [
        (gym.spaces.Box(0, 1, (2,)), gym.spaces.Discrete(5, start=-2), "action space Discrete\\(5, start=-2\\) does not start at 0"),
        (gym.spaces.Box(0, 1, (2,)), gym.spaces.MultiDiscrete([3, 3], start=[0, 1]), "action space MultiDiscrete"),
        (gym.spaces.Discrete(4, start=1), gym.spaces.Discrete(2), "observation space Discrete\\(4, start=1\\)"),
        (gym.spaces.Dict({"a": gym.spaces.Box(0, 1, (2,)), "n": gym.spaces.Discrete(3, start=-1)}), gym.spaces.Discrete(2),
         "observation space Discrete\\(3, start=-1\\) does not start at 0.*ObservationWrapper"),
    ],
)
def test_spaces_that_do_not_start_at_0_are_refused_with_a_fix(observation_space, action_space, named: str) -> None:
    # SB3 ignores ``start``: PPO's actions 3 and 4 reached an env expecting -2..2 (an IndexError
    # deep in the user's step) after a first round whose random actions were -2..2.
    with pytest.raises(EnvSetupError, match=named):
        check_spaces(observation_space, action_space, "odd")
    if named.startswith("action"):  # the same observations with actions from 0 pass
        check_spaces(observation_space, gym.spaces.Discrete(5), "odd")


class _NoRenderModeEnv(gym.Env):
    """Says it renders rgb_array, but its constructor takes no ``render_mode``."""

    metadata = {"render_modes": ["rgb_array"]}
    observation_space = gym.spaces.Box(0, 1, (2,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        super().__init__()


@pytest.mark.parametrize("entry_point, refusal", [
    (lambda **kwargs: _DictObsEnv(**kwargs), "rgb_array"),  # its metadata lists no rgb_array
    # It lists rgb_array but its constructor takes no render_mode: the check read only the metadata,
    # `prefloop run` started, and the clip worker failed on every clip.
    (lambda **kwargs: _NoRenderModeEnv(**kwargs), "rejected its keyword arguments \\{'render_mode': 'rgb_array'\\}"),
], ids=["no-rgb_array", "no-render_mode-argument"])
def test_an_env_that_cannot_render_clips_is_refused_before_training(entry_point, refusal) -> None:
    gym.register("prefloop-test/NoClips-v0", entry_point=entry_point)
    try:
        with pytest.raises(EnvSetupError, match=refusal):
            check_can_render(EnvSpec("prefloop-test/NoClips-v0"))
    finally:
        gym.registry.pop("prefloop-test/NoClips-v0")
    check_can_render(EnvSpec("CartPole-v1"))


class _DictObsEnv(gym.Env):
    metadata = {"render_modes": []}
    observation_space = gym.spaces.Dict({"a": gym.spaces.Box(0, 1, (2,))})
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, True, False, {}


def test_vec_recorder_segments_match_a_replay_of_their_episode_in_every_env() -> None:
    spec = EnvSpec("CartPole-v1")
    buffer = SegmentBuffer(10_000)
    recorder = VecSegmentRecorder(random_vec(spec, n_envs=4), buffer, segment_length=8, seed=1)
    play(recorder, 400)
    segments = buffer.recent()
    assert len(segments) > 50
    assert len({s.episode_seed for s in segments}) > 20
    for seg in segments:
        env = make_env(spec)
        obs, _ = env.env.reset(seed=seg.episode_seed)
        for t, action in enumerate(seg.episode_actions):
            if t >= seg.start_step:
                np.testing.assert_allclose(obs, seg.obs[t - seg.start_step], atol=1e-6)
                assert seg.actions[t - seg.start_step] == action
            obs, reward, terminated, truncated, _ = env.step(int(action))
            if t >= seg.start_step:
                assert seg.true_rewards[t - seg.start_step] == reward
        assert terminated == seg.terminated
    # the history of finished episodes is dropped, not kept forever
    assert recorder.history_steps < 200


def test_long_episodes_give_segments_before_they_end() -> None:
    spec = EnvSpec("Pendulum-v1")  # 200-step episodes, never terminated
    buffer = SegmentBuffer(1000)
    recorder = VecSegmentRecorder(random_vec(spec, n_envs=4), buffer, segment_length=20, seed=0)
    play(recorder, 60)  # 60 steps per env: no episode has ended
    segments = buffer.recent()
    assert len(segments) >= 4 and len({s.episode_seed for s in segments}) == 4
    assert all(s.n_valid == 20 and not s.terminated and s.start_step + 20 <= 60 for s in segments)
    play_on = 150
    for _ in range(play_on):  # the rest of the episodes: later cuts never repeat a start step
        recorder.step(np.stack([recorder.action_space.sample() for _ in range(4)]))
    by_episode: dict[int, list[int]] = {}
    for seg in buffer.recent():
        by_episode.setdefault(seg.episode_seed, []).append(seg.start_step)
    assert all(len(starts) == len(set(starts)) for starts in by_episode.values())
    render_segment(spec, segments[0])  # replays and checks every observation


class _Float64Actions(gym.Env):
    """Remembers the actions it is given; float64 actions like DeepMind Control's through shimmy."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float64)

    def __init__(self, render_mode=None):
        self.received: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.received.append(np.asarray(action))
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_float64_actions_reach_the_env_as_recorded_so_a_replay_repeats_the_episode() -> None:
    # Segments record actions as float32; an env trained on unrounded float64 actions diverged in
    # replay (walker_walk: a different motion within 90 steps, the clip refused).
    env = make_env(EnvSpec("Float64Actions", factory=_Float64Actions), seed=0)
    assert env.action_space.dtype == np.float64  # the policy's view is unchanged
    env.reset()
    precise = np.array([0.1234567890123, -0.9876543210987])
    env.step(precise)
    received = env.unwrapped.received[-1]
    assert received.dtype == np.float64
    np.testing.assert_array_equal(received, precise.astype(np.float32).astype(np.float64))
    assert not np.array_equal(received, precise)


class _MultiSpacesGrid(gym.Env):
    """A MultiDiscrete position moved by MultiBinary actions (one bit per axis); reward: progress."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    observation_space = gym.spaces.MultiDiscrete([8, 8])
    action_space = gym.spaces.MultiBinary(2)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = np.zeros(2, dtype=np.int64)
        return self.position.copy(), {}

    def step(self, action):
        bits = np.asarray(action)
        assert bits.shape == (2,) and np.isin(bits, (0, 1)).all(), f"not a MultiBinary(2) action: {bits!r}"
        self.position = np.minimum(self.position + bits.astype(np.int64), 7)
        return self.position.copy(), float(self.position.sum()) / 14, bool(self.position.sum() == 14), False, {}

    def render(self) -> np.ndarray:
        frame = np.zeros((64, 64, 3), np.uint8)
        x, y = self.position * 8
        frame[y : y + 8, x : x + 8] = 255
        return frame


def test_multidiscrete_observations_and_multibinary_actions_train_and_replay(tmp_path) -> None:
    # Both were refused though SB3's PPO and A2C take them and the reward model reads them.
    from prefloop.store import PreferenceStore, sqlite_url
    from prefloop.training.config import TrainConfig
    from prefloop.training.loop import train

    env_id = "prefloop-test/MultiSpaces-v0"
    gym.register(env_id, entry_point=_MultiSpacesGrid, max_episode_steps=40)
    try:
        config = TrainConfig(env_id=env_id, run_dir=tmp_path / "run", steps=1_500, labels=8, seed=0, n_envs=2,
                             eval_episodes=1, progress_bar=False, algo_kwargs={"n_steps": 256})
        result = train(config)
        assert result.labels_used == 8
        with PreferenceStore(sqlite_url(tmp_path / "run" / "prefs.sqlite"), run_name="run", create_run=False) as store:
            segment = store.labeled_pairs()[-1].left
        assert np.isin(segment.actions, (0, 1)).all() and segment.actions.shape[1:] == (2,)
        with SegmentRenderer(EnvSpec(env_id)) as renderer:
            frames = renderer.render(segment, verify=True)  # the replay gives the stored observations
        assert frames.shape[1:] == (64, 64, 3) and frames.max() == 255
    finally:
        gym.registry.pop(env_id)
