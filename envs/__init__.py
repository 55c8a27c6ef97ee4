"""The Gymnasium side of prefloop: recording segments, re-rendering them, swapping in the learned reward.

env -> :class:`EpisodeSeeder` (replayable episodes) -> :class:`VecSegmentRecorder` (segments of
what the agent did, true reward) -> :class:`VecLearnedReward` (what the policy is trained on).
"""

from prefloop.envs.mujoco_render import keep_signals_from_sdl, prefer_egl, prefer_windowless_sdl

# Before anything imports mujoco: it picks its OpenGL platform at import time, and a headless
# machine has only EGL (a later switch renders silently black frames). A user's MUJOCO_GL wins.
prefer_egl()
prefer_windowless_sdl()  # likewise before pygame's first frame; a user's SDL_VIDEODRIVER wins
keep_signals_from_sdl()  # SIGTERM stops a process that has drawn a frame (a user's SDL hint wins)

from prefloop.envs.factory import (
    EnvSetupError,
    EnvSpec,
    check_can_render,
    check_env_id,
    check_spaces,
    make_env,
)
from prefloop.envs.dmc import register_dmc_envs
from prefloop.envs.learned_reward import (
    LearnedRewardWrapper,
    RewardFunction,
    VecLearnedReward,
)
from prefloop.envs.recorder import SegmentRecorder, VecSegmentRecorder
from prefloop.envs.render import ReplayMismatchError, SegmentRenderer, render_segment
from prefloop.envs.pixels import ATARI_ID, PIXEL_CARTPOLE_ID, PIXELS_ID, register_pixel_envs
from prefloop.envs.seeding import EpisodeSeeder
from prefloop.envs.structured import LeafDictObservation
from prefloop.envs.segments import EpisodeSegmenter, SegmentBuffer, cut_segments

__all__ = [
    "ATARI_ID",
    "PIXELS_ID",
    "PIXEL_CARTPOLE_ID",
    "EnvSetupError",
    "EnvSpec",
    "EpisodeSeeder",
    "EpisodeSegmenter",
    "LeafDictObservation",
    "LearnedRewardWrapper",
    "ReplayMismatchError",
    "RewardFunction",
    "SegmentBuffer",
    "SegmentRecorder",
    "SegmentRenderer",
    "cut_segments",
    "VecLearnedReward",
    "VecSegmentRecorder",
    "check_can_render",
    "check_env_id",
    "check_spaces",
    "make_env",
    "register_dmc_envs",
    "register_pixel_envs",
    "render_segment",
]

register_pixel_envs()
register_dmc_envs()
