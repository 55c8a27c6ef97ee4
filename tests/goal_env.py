"""A small goal-based env with a Dict observation, like gymnasium-robotics' (for tests and benchmarks).

A point moves on the square ``[-1, 1]^2`` towards a goal drawn at reset. Actions: ``Discrete(5)``
(stay, +x, -x, +y, -y; steps of ``STEP``). The dense reward is ``-||achieved_goal - desired_goal||``
(gymnasium-robotics' "Dense" variants), and ``info["is_success"]`` says whether the point is within
``SUCCESS_DISTANCE`` of the goal. Episodes are cut at ``MAX_STEPS`` (truncation, no termination).

``observation_structure`` chooses the observation space:

- ``"dict"``: ``Dict(achieved_goal=Box(2), desired_goal=Box(2), observation=Box(4))`` --
  ``observation`` is position and last move;
- ``"tuple"``: ``Tuple((Box(4), Tuple((Box(2), Box(2))), Discrete(5)))`` -- observation,
  (achieved, desired), and the last action (a Discrete leaf, one-hot in the flat vector).

Renders 48x48 rgb_array frames (goal green, point red), so segments re-render as clips.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

MAX_STEPS = 25
STEP = 0.1
SUCCESS_DISTANCE = 0.1
ENV_ID = "prefloop-test/PointGoal-v0"
TUPLE_ENV_ID = "prefloop-test/PointGoalTuple-v0"
_MOVES = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=np.float32)


class PointGoalEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, observation_structure: str = "dict", render_mode: str | None = None) -> None:
        if observation_structure not in ("dict", "tuple"):
            raise ValueError(f"observation_structure must be 'dict' or 'tuple', got {observation_structure!r}")
        self.structure = observation_structure
        self.render_mode = render_mode
        box2 = spaces.Box(-1.0, 1.0, (2,), np.float32)
        box4 = spaces.Box(-1.0, 1.0, (4,), np.float32)
        if observation_structure == "dict":
            self.observation_space = spaces.Dict({"observation": box4, "achieved_goal": box2, "desired_goal": box2})
        else:
            self.observation_space = spaces.Tuple((box4, spaces.Tuple((box2, box2)), spaces.Discrete(5)))
        self.action_space = spaces.Discrete(5)
        self._pos = np.zeros(2, np.float32)
        self._goal = np.zeros(2, np.float32)
        self._last = 0

    def compute_reward(self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any) -> np.ndarray:
        """gymnasium-robotics' GoalEnv signature: the dense reward, batched over the last axis."""
        return -np.linalg.norm(np.asarray(achieved_goal) - np.asarray(desired_goal), axis=-1)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-0.9, 0.9, 2).astype(np.float32)
        self._goal = self.np_random.uniform(-0.8, 0.8, 2).astype(np.float32)
        self._last = 0
        return self._obs(), {"is_success": self._success()}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._last = int(action)
        self._pos = np.clip(self._pos + STEP * _MOVES[self._last], -1.0, 1.0).astype(np.float32)
        reward = float(self.compute_reward(self._pos, self._goal, None))
        return self._obs(), reward, False, False, {"is_success": self._success()}

    def _success(self) -> bool:
        return bool(np.linalg.norm(self._pos - self._goal) < SUCCESS_DISTANCE)

    def _obs(self) -> Any:
        observation = np.concatenate([self._pos, _MOVES[self._last]]).astype(np.float32)
        if self.structure == "dict":
            return {"observation": observation, "achieved_goal": self._pos.copy(), "desired_goal": self._goal.copy()}
        return (observation, (self._pos.copy(), self._goal.copy()), self._last)

    def render(self) -> np.ndarray:
        frame = np.full((48, 48, 3), 235, np.uint8)
        for centre, colour in ((self._goal, (40, 160, 40)), (self._pos, (200, 40, 40))):
            col, row = ((np.asarray(centre) + 1.0) / 2.0 * 47).round().astype(int)
            frame[max(0, 47 - row - 2) : 47 - row + 3, max(0, col - 2) : col + 3] = colour
        return frame


def register() -> str:
    """Register :class:`PointGoalEnv` as ``ENV_ID`` (Dict) and ``TUPLE_ENV_ID`` (Tuple); idempotent.
    Returns ``ENV_ID``."""
    if ENV_ID not in gym.registry:
        gym.register(ENV_ID, entry_point=PointGoalEnv, max_episode_steps=MAX_STEPS)
    if TUPLE_ENV_ID not in gym.registry:
        gym.register(TUPLE_ENV_ID, entry_point=PointGoalEnv, max_episode_steps=MAX_STEPS,
                     kwargs={"observation_structure": "tuple"})
    return ENV_ID
