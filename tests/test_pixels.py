"""Image observations: uint8 end to end, a CNN reward model, CnnPolicy, clips a person can watch."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from prefloop.envs import ATARI_ID, PIXEL_CARTPOLE_ID, EnvSpec, SegmentBuffer, VecSegmentRecorder, render_segment
from prefloop.reward_models import (
    CnnRewardEnsemble,
    RewardEnsemble,
    RewardModelConfig,
    RewardTrainer,
    build_reward_model,
    is_image_observation_space,
    load_reward_model,
    save_reward_model,
)
from prefloop.types import LabeledPair, SegmentPair

from prefloop.datasets import export_dataset, load_dataset
from prefloop.store import PreferenceStore, sqlite_url
from prefloop.training.algos import default_policy
from prefloop.training.loop import build_vec_env, collect_random


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def pixel_segments(env_id: str = PIXEL_CARTPOLE_ID, steps: int = 240, length: int = 20, **kwargs) -> list:
    buffer = SegmentBuffer(200)
    recorder = VecSegmentRecorder(build_vec_env(EnvSpec(env_id, kwargs), 2, seed=3), buffer, length, seed=3)
    collect_random(recorder, steps, seed=3)
    return buffer.recent()


def test_pixel_segments_are_uint8_frames_that_change() -> None:
    segments = pixel_segments()
    assert len(segments) >= 4
    seg = segments[0]
    assert seg.obs.dtype == np.uint8 and seg.obs.shape == (20, 4, 64, 96)
    frames = np.stack([s.obs for s in segments])
    assert frames.max() > 0 and frames.min() < 255, "frames are blank"
    # the newest frame differs from the oldest one of the stack once the cart has moved
    assert any(np.any(s.obs[-1, -1] != s.obs[-1, 0]) for s in segments)
    # state-based CartPole still stores float32
    assert pixel_segments("CartPole-v1", steps=120)[0].obs.dtype == np.float32


def test_sigterm_stops_a_process_that_has_drawn_pixel_frames() -> None:
    """pygame's SDL takes SIGTERM over at its first frame unless told not to: a pixel run would then
    survive ``kill``, ``timeout`` and ``docker stop``."""
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import time\n"
        "from prefloop.envs import PIXEL_CARTPOLE_ID, EnvSpec\n"
        "from prefloop.training.loop import build_vec_env\n"
        "venv = build_vec_env(EnvSpec(PIXEL_CARTPOLE_ID), 1, seed=0)\n"
        "venv.reset()\n"
        "obs, *_ = venv.step([0])\n"
        "assert obs.max() > 0, 'no frame was drawn'\n"
        "print('drawn', flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SDL_NO_SIGNAL_HANDLERS"}  # what prefloop sets, not the caller
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "drawn"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_store_keeps_pixel_segments_as_uint8_bytes_and_datasets_keep_the_dtype(tmp_path: Path) -> None:
    from prefloop.stacked_frames import distinct_frames

    short = pixel_segments(length=5)  # short enough that some lie inside an episode (a whole stack)
    segments = ([s for s in short if distinct_frames(s.obs) is None][:2]  # padded after the episode ended
                + [s for s in short if distinct_frames(s.obs) is not None][:2])
    db = tmp_path / "store.db"
    store = PreferenceStore(sqlite_url(db), run_name="pixels")
    store.add_pairs([SegmentPair(segments[0], segments[1]), SegmentPair(segments[2], segments[3])])
    stored = store.get_segments([s.id for s in segments])
    for before, after in zip(segments, stored):
        assert after.obs.dtype == np.uint8
        np.testing.assert_array_equal(after.obs, before.obs)
    store.close()
    with sqlite3.connect(db) as conn:
        sizes = [row[0] for row in conn.execute("SELECT length(obs) FROM segments")]
    stacked = [distinct_frames(s.obs) is not None for s in segments]
    assert stacked == [False, False, True, True], "pixel CartPole stacks 4 frames: short segments inside an episode"
    for size, seg, once in zip(sizes, segments, stacked):
        steps = len(seg.obs)  # 5 steps of 4 x 64 x 96 bytes; once per frame: steps + 3 frames
        expected = (steps + 3) * 64 * 96 if once else seg.obs.size
        assert expected <= size < expected + 256, (sizes, stacked)

    dataset = load_dataset(export_dataset(sqlite_url(db), "pixels", tmp_path / "export").path)
    assert all(s.obs.dtype == np.uint8 for s in dataset.segments)
    exported = {s.id: s for s in dataset.segments}
    np.testing.assert_array_equal(exported[segments[0].id].obs, segments[0].obs)


def test_pixel_clips_show_the_normal_rendering_of_the_same_episode() -> None:
    segment = pixel_segments()[0]
    frames = render_segment(EnvSpec(PIXEL_CARTPOLE_ID), segment)  # replays and checks every stack
    assert frames.shape == (21, 400, 600, 3) and frames.dtype == np.uint8
    # CartPole-v1 replaying the same seed and actions shows exactly the same colour frames
    same = render_segment(EnvSpec("CartPole-v1"), segment, verify=False)
    np.testing.assert_array_equal(frames, same)


def test_image_observations_get_a_cnn_reward_model_that_learns_and_round_trips(tmp_path: Path) -> None:
    space = gym.spaces.Box(0, 255, (2, 48, 48), np.uint8)
    config = RewardModelConfig(n_members=2, cnn="christiano", batch_size=8, min_steps_per_fit=30, epochs=30)
    model = build_reward_model(space, gym.spaces.Discrete(3), config)
    assert isinstance(model, CnnRewardEnsemble)
    assert isinstance(build_reward_model(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3), config), RewardEnsemble)
    assert not isinstance(build_reward_model(gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(3), config), CnnRewardEnsemble)

    rng = np.random.default_rng(0)
    length = 6

    def segment(bright: bool):
        from prefloop.types import Segment

        obs = rng.integers(0, 60, size=(length, 2, 48, 48)).astype(np.uint8)
        if bright:  # the reward: a white square somewhere in the frame
            row, col = rng.integers(0, 38, size=2)
            obs[:, :, row : row + 10, col : col + 10] = 255
        actions = rng.integers(0, 3, size=length)
        return Segment(obs=obs, actions=actions, true_rewards=np.full(length, float(bright), np.float32), n_valid=length,
                       terminated=False, episode_seed=0, start_step=0, episode_actions=actions)

    pairs = []
    for _ in range(40):
        right_better = bool(rng.random() < 0.5)
        pairs.append(LabeledPair(left=segment(not right_better), right=segment(right_better), target=float(right_better)))
    # the step cache the trainer fits from holds the pixels as bytes, not floats
    encoded = model.encode(torch.as_tensor(pairs[0].left.obs), torch.as_tensor(pairs[0].left.actions))
    assert encoded.dtype == torch.uint8
    RewardTrainer(model, config).fit(pairs)
    held_out = [segment(True) for _ in range(5)] + [segment(False) for _ in range(5)]
    returns = model.predict_segment_returns(held_out)
    assert returns[:5].min() > returns[5:].max(), returns
    model.update_normalization_from_segments(held_out)

    save_reward_model(model, tmp_path / "rm")
    again = load_reward_model(tmp_path / "rm")
    assert isinstance(again, CnnRewardEnsemble) and again.conv == model.conv
    obs = np.stack([s.obs[0] for s in held_out])
    actions = np.array([s.actions[0] for s in held_out])
    np.testing.assert_allclose(again.predict(obs, actions), model.predict(obs, actions), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="0..255"):
        model.predict(obs.astype(np.float32) * 2, actions)


def test_image_observations_get_cnn_policy() -> None:
    assert default_policy(gym.spaces.Box(0, 255, (4, 64, 96), np.uint8)) == "CnnPolicy"
    assert default_policy(gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)) == "CnnPolicy"
    assert default_policy(gym.spaces.Box(-1.0, 1.0, (4,), np.float32)) == "MlpPolicy"


def test_atari_preset_gives_stacked_uint8_frames_and_replays_for_clips() -> None:
    pytest.importorskip("ale_py")
    segments = pixel_segments(ATARI_ID, steps=200, length=10)
    assert segments and segments[0].obs.shape == (10, 4, 84, 84) and segments[0].obs.dtype == np.uint8
    assert segments[0].obs.max() > 0
    frames = render_segment(EnvSpec(ATARI_ID), segments[0])  # verify=True: the replay matches the recording
    assert frames.shape == (11, 210, 160, 3) and frames.max() > 0


def test_ale_ids_get_the_atari_preset_and_its_frames_and_name_their_game() -> None:
    """ale-py's own ids (Gymnasium 1.x registers them only when asked) work as --env: the Atari
    preset's settings and frames (84x84 grey, 4 stacked), the raters asked about that game."""
    pytest.importorskip("ale_py")
    from prefloop.envs.presets import default_preset
    from prefloop.training.config import TrainConfig

    for env_id in ("ALE/Pong-v5", "PongNoFrameskip-v4"):
        preset = default_preset(env_id)
        assert (preset.env_id, preset.segment_length, preset.algo, preset.env_kwargs) == (env_id, 25, "ppo", {})
        assert "Pong" in preset.guideline and "bricks" not in preset.guideline
    segments = pixel_segments("ALE/Pong-v5", steps=120, length=10)
    assert segments[0].obs.shape == (10, 4, 84, 84) and segments[0].obs.dtype == np.uint8 and segments[0].obs.max() > 0
    frames = render_segment(EnvSpec("ALE/Pong-v5"), segments[0])  # a person's clip: the game's own colour frames
    assert frames.shape == (11, 210, 160, 3) and frames.max() > 0
    # the preset's own id names the game it is given
    assert "Pong" in TrainConfig(env_id=ATARI_ID, run_dir="r", env_kwargs={"game": "ALE/Pong-v5"}).resolve().guideline
    assert "bricks" in TrainConfig(env_id=ATARI_ID, run_dir="r").resolve().guideline
    # RAM observations are not images: the env as ale-py makes it
    assert EnvSpec("ALE/Pong-v5", {"obs_type": "ram"}).build().observation_space.shape == (128,)


def test_an_atari_id_without_ale_py_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from prefloop.envs import EnvSetupError, check_env_id

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ale_py" else real_find_spec(name, *a))
    for env_id in ("ALE/Qbert-v5", "QbertNoFrameskip-v4"):
        monkeypatch.delitem(gym.registry, env_id, raising=False)  # as before ale-py registered its ids
        with pytest.raises(EnvSetupError, match=r"Atari game.*pip install 'prefloop\[atari\]'"):
            check_env_id(env_id)
    for typo in ("CartPol-v1", "CartPol-v0"):  # not a game: the usual suggestion
        with pytest.raises(EnvSetupError, match=f"Unknown environment id '{typo}'. Did you mean 'CartPole-v"):
            check_env_id(typo)


@pytest.mark.slow
def test_tiny_pixel_run_trains_a_cnn_reward_and_a_cnn_policy(tmp_path: Path) -> None:
    from prefloop.training.config import TrainConfig
    from prefloop.training.loop import train
    from prefloop.training.rundir import RunDir

    config = TrainConfig(
        env_id=PIXEL_CARTPOLE_ID, run_dir=tmp_path / "run", labels=10, steps=1024, n_envs=2, seed=0,
        progress_bar=False, eval_episodes=1, segment_length=10,
        algo_kwargs=dict(n_steps=64, batch_size=64, n_epochs=1),
        reward_model=RewardModelConfig(cnn="christiano", n_members=2, batch_size=4, min_steps_per_fit=5, epochs=2),
    )
    result = train(config)
    assert result.labels_used == 10
    run = RunDir(tmp_path / "run")
    model = load_reward_model(run.latest_checkpoint() / "reward_model")
    assert isinstance(model, CnnRewardEnsemble)
    from stable_baselines3 import PPO
    from stable_baselines3.common.policies import ActorCriticCnnPolicy

    policy = PPO.load(run.latest_checkpoint() / "policy.zip", device="cpu").policy
    assert isinstance(policy, ActorCriticCnnPolicy)
    store = PreferenceStore(sqlite_url(run.store_path), run_name=config.run_name or run.path.name)
    pairs = store.labeled_pairs()
    assert len(pairs) == 10 and all(p.left.obs.dtype == np.uint8 for p in pairs)
    store.close()


def test_frame_stacks_share_their_frames_in_memory_and_keep_their_values() -> None:
    from prefloop.envs.segments import share_stacked_frames

    pytest.importorskip("ale_py")
    segments = pixel_segments(ATARI_ID, steps=400, length=10)
    shared = [s for s in segments if not s.obs.flags.writeable]
    assert shared, "segments of a frame-stacked env should be views of shared frames"
    for seg in shared:
        # the view shows the stack the env gave: newest frame last, shifted by one each step
        np.testing.assert_array_equal(seg.obs[1:, :-1], seg.obs[:-1, 1:])
    def root(array: np.ndarray) -> np.ndarray:
        while getattr(array, "base", None) is not None:  # through as_strided's holder to the frames
            array = array.base
        return array

    bases = {id(root(s.obs)): root(s.obs) for s in shared}
    assert sum(b.nbytes for b in bases.values()) < 0.5 * sum(s.obs.nbytes for s in shared)
    # anything that is not a shifted stack is returned as it is
    rgb = np.random.default_rng(0).integers(0, 255, size=(5, 3, 8, 8)).astype(np.uint8)
    assert share_stacked_frames(rgb) is rgb


def test_train_command_picks_the_cnn_torso(tmp_path: Path) -> None:
    from prefloop.cli.main import build_parser, build_train_config

    args = build_parser().parse_args(["train", "--env", PIXEL_CARTPOLE_ID, "--run-dir", str(tmp_path / "r"), "--reward-cnn", "christiano"])
    assert build_train_config(args).reward_model.cnn == "christiano"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--env", PIXEL_CARTPOLE_ID, "--reward-cnn", "resnet"])


def test_stacked_frames_go_to_the_store_once_per_frame_and_come_back_the_same() -> None:
    from prefloop.serialization import array_to_bytes
    from prefloop.stacked_frames import STACKED_MAGIC, obs_from_bytes, obs_to_bytes

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(13, 12, 10), dtype=np.uint8)
    obs = np.stack([frames[t : t + 4] for t in range(10)])  # (10, 4, 12, 10): a 4-frame stack
    blob = obs_to_bytes(obs)
    assert blob.startswith(STACKED_MAGIC) and len(blob) < 0.4 * obs.nbytes
    back = obs_from_bytes(blob)
    assert back.shape == obs.shape and back.dtype == np.uint8 and not back.flags.writeable
    np.testing.assert_array_equal(back, obs)
    # not a stack (or not uint8): plain .npy, as earlier prefloop wrote it -- and that still reads
    for other in (rng.integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8), obs.astype(np.float32)):
        assert obs_to_bytes(other) == array_to_bytes(other)
        np.testing.assert_array_equal(obs_from_bytes(array_to_bytes(other)), other)
    # a damaged blob is one clear error, not garbage frames
    with pytest.raises(ValueError, match="damaged"):
        obs_from_bytes(STACKED_MAGIC)
    with pytest.raises(ValueError, match="damaged"):
        obs_from_bytes(STACKED_MAGIC + bytes([40]) + blob[len(STACKED_MAGIC) + 1 :])


@pytest.mark.parametrize(("shape", "image"), [
    ((64, 64, 3), True), ((84, 84, 4), True), ((3, 64, 64), True), ((4, 84, 84), True), ((84, 84), True),
    ((5, 5), False), ((7, 7, 3), False), ((64,), False),
])
def test_channel_last_frames_get_the_cnn_reward_model_as_channel_first_ones_do(shape: tuple, image: bool) -> None:
    # A user's (H, W, 3) pixel env got CnnPolicy but an MLP reward model on every pixel, each
    # standardised on its own: the test read the last two dimensions, (W, 3), as the frame's size.
    space = gym.spaces.Box(0, 255, shape, np.uint8)
    assert is_image_observation_space(space) is image
    if image:
        assert isinstance(build_reward_model(space, gym.spaces.Discrete(3), RewardModelConfig(n_members=1)), CnnRewardEnsemble)


class _ChannelLastFrames(gym.Env):
    """36x36 RGB frames, channel-last; pixel (0, 0) holds the step count."""

    observation_space = gym.spaces.Box(0, 255, (36, 36, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        return self._frame(), 0.0, False, self.t >= 10, {}

    def _frame(self) -> np.ndarray:
        frame = np.zeros((36, 36, 3), np.uint8)
        frame[0, 0, 0] = self.t  # only channel 0: a transposed frame puts it elsewhere
        return frame


def test_an_off_policy_replay_buffer_of_channel_last_frames_is_relabelled_as_the_env_gives_them() -> None:
    # DQN on a user's (H, W, 3) env: SB3 keeps its replay buffer channel-first, and relabelling it
    # raised "observation batch has shape (4, 3, 48, 48), expected (B, 48, 48, 3)" after the first round.
    from stable_baselines3 import DQN
    from stable_baselines3.common.vec_env import DummyVecEnv
    from prefloop.training.algos import relabel_replay_buffer

    class FirstPixel:
        def predict(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
            assert obs.shape[1:] == (36, 36, 3)
            return obs[:, 0, 0, 0].astype(np.float32)

    model = DQN("CnnPolicy", DummyVecEnv([_ChannelLastFrames]), buffer_size=64, learning_starts=100, seed=0, device="cpu")
    model.learn(total_timesteps=20)
    assert relabel_replay_buffer(model, FirstPixel()) == 20
    assert sorted(model.replay_buffer.rewards[:20, 0].tolist()) == sorted([float(t % 10) for t in range(20)])
