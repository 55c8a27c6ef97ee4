"""An env of your own: an unregistered env from a factory, or a registered one in your wrappers."""

import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from prefloop.envs import EnvSpec, make_env

from prefloop.training.config import TrainConfig
from prefloop.training.loop import train


class Corridor(gym.Env):
    """Walk left or right along [-1, 1]; the reward is higher the closer to the goal at 0.5."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.render_mode = render_mode
        self.x = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1.0, 1.0))
        return np.array([self.x], dtype=np.float32), {}

    def step(self, action: int):
        self.x = float(np.clip(self.x + (0.1 if action == 1 else -0.1), -1.0, 1.0))
        return np.array([self.x], dtype=np.float32), -abs(self.x - 0.5), False, False, {}

    def render(self) -> np.ndarray:  # (64, 64, 3) uint8: a white dot on a grey line
        frame = np.full((64, 64, 3), 96, dtype=np.uint8)
        column = int((self.x + 1.0) / 2.0 * 63)
        frame[28:36, max(0, column - 3): column + 4] = 255
        return frame


def make_corridor(render_mode: str | None = None) -> gym.Env:
    """The factory: called with the run's env_kwargs, and render_mode="rgb_array" for clips."""
    return gym.wrappers.TimeLimit(Corridor(render_mode=render_mode), max_episode_steps=50)


def noisy_cartpole(render_mode: str | None = None) -> gym.Env:
    """A registered env in your own wrappers works the same way."""
    env = gym.make("CartPole-v1", render_mode=render_mode)
    return gym.wrappers.TransformObservation(
        env, lambda obs: obs + np.random.normal(0, 0.01, obs.shape).astype(np.float32), env.observation_space
    )


# Every env of the run -- training, evaluation, the clips people see -- is built by make_env.
env = make_env(EnvSpec("NoisyCartPole", factory=noisy_cartpole), seed=0)
print("noisy cartpole obs:", env.reset()[0].shape)

config = TrainConfig(
    env_id="Corridor",  # a name for the run; no Gymnasium registration needed
    env_factory=make_corridor,
    segment_length=25,
    algo_kwargs={"n_steps": 256},
    run_dir=Path("runs") / time.strftime("corridor-%Y%m%d-%H%M%S"),
    labels=30,
    steps=4000,
    eval_episodes=3,
    progress_bar=False,
)
result = train(config)
print("labels:", result.labels_used, "eval return:", result.eval_return_mean)
