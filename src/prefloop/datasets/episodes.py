"""A run's recorded episodes as a Minari dataset, for offline-RL tools.

A segment is a window of an episode, and it keeps the episode's seed and every action from the
reset to its last step (how clips are rendered). So the longest recorded span of each episode
replays exactly in the env it was recorded in, and becomes one Minari episode: observations
(span + 1, the last one after the last action), actions, the env's rewards, and terminations and
truncations. What a Minari dataset cannot hold stays in the JSON Lines and Parquet exports:
pairs, labels, raters; segments' provenance (env steps, creation times).

"Where the env allows": the env must be installed here (it is made with the run's env_spec,
as for training) and deterministic given seed and actions; every recorded observation of
every segment is compared with the replayed one, and a difference refuses the export by name.
The last step of an episode that did not terminate within the recorded span is marked truncated
(the recording ends there, the episode may not have).

Needs minari: ``pip install 'prefloop[data]'``. The dataset goes where Minari keeps its local
datasets (``MINARI_DATASETS_PATH``, else ``~/.minari/datasets``), so ``minari.load_dataset(id)``
finds it.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from prefloop.datasets.export import read_run
from prefloop.datasets.format import DatasetError, missing_extra_error
from prefloop.envs import EnvSpec
from prefloop.envs.factory import EnvSetupError, make_env
from prefloop.envs.seeding import EpisodeSeeder, RecordedPrecisionActions
from prefloop.envs.structured import LeafDictObservation
from prefloop.types import Segment

try:
    import minari
    from minari.data_collector import EpisodeBuffer
except ImportError:
    raise missing_extra_error("the Minari export", "minari") from None

# Minari's id syntax: (namespace/)(env_name/)dataset_name(-v[version]).
_DATASET_ID = re.compile(r"([A-Za-z0-9_.-]+/){0,2}[A-Za-z0-9_.-]+-v[0-9]+")
OBS_ATOL = 1e-4  # float32 observations replayed in float64 envs


@dataclass
class Episode:
    """One recorded episode: its seed, the actions of its longest recorded span, and the
    segments that lie in it."""

    seed: int
    actions: np.ndarray
    segments: list[Segment] = field(default_factory=list)


@dataclass
class MinariSummary:
    """What :func:`export_minari` wrote."""

    dataset_id: str
    path: str
    episodes: int
    steps: int
    segments: int

    def to_text(self) -> str:
        return f"{self.episodes} episodes, {self.steps} steps, from {self.segments} segments"


def default_dataset_id(run_name: str) -> str:
    """``prefloop/<run name>-v0`` with the characters Minari ids cannot hold replaced by ``_``."""
    return f"prefloop/{re.sub(r'[^A-Za-z0-9_.]', '_', run_name)[:100] or 'run'}-v0"


def export_minari(store_url: str, run_name: str, dataset_id: str | None = None) -> MinariSummary:
    """Write the episodes of run ``run_name`` as the Minari dataset ``dataset_id``.

    Args:
        dataset_id: Minari's ``(namespace/)name-vN``; default :func:`default_dataset_id`.

    Raises:
        DatasetError: the run has no segments or no env spec, its env cannot be made here, a
            replayed episode differs from its recording, or the id is taken or malformed.
    """
    dataset_id = dataset_id or default_dataset_id(run_name)
    if not _DATASET_ID.fullmatch(dataset_id):
        raise DatasetError(
            f"Minari dataset id {dataset_id!r} is not of the form (namespace/)name-vN, e.g. "
            "'prefloop/cartpole-human-v0'; pass another --dataset-id"
        )
    if minari.storage.get_dataset_path(dataset_id).exists():
        raise DatasetError(
            f"a Minari dataset {dataset_id!r} already exists in {minari.storage.get_dataset_path()}; "
            "pass another --dataset-id (or a new version, -v1), or delete it with `minari delete`"
        )
    run = read_run(store_url, run_name)
    if not run.segments:
        raise DatasetError(f"run {run_name!r} has no segments, so no episodes to export")
    try:
        spec = EnvSpec.from_json(run.env_spec)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DatasetError(f"run {run_name!r} does not say which env it was recorded in (no valid env_spec); "
                           "a Minari export replays episodes in that env") from None
    try:
        env = make_env(spec)
    except (EnvSetupError, gym.error.Error) as exc:
        raise DatasetError(f"env {spec.env_id} cannot be made here ({exc}); a Minari export replays "
                           "episodes in it. Install it, or export --format parquet instead") from None
    try:
        env = _as_gymnasium_makes_it(env)
        episodes = group_episodes(run.segments)
        buffers = [_replay(env, episode, i, spec.env_id) for i, episode in enumerate(episodes)]
        with warnings.catch_warnings():  # Minari asks for an author and a code link (a run has neither)
            warnings.filterwarnings("ignore", message=r"`(author|author_email|code_permalink)` is set to None")
            # and for an env spec, which an env registered with a callable cannot give (see below)
            warnings.filterwarnings("ignore", message=r"(`eval_env` is set to None|env_spec is None)")
            dataset = minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=_serialisable_spec(env),
                eval_env=_serialisable_spec(env),
                observation_space=env.observation_space,
                action_space=env.action_space,
                algorithm_name="prefloop (RL from human preferences)",
                description=(
                    f"Episodes of prefloop run {run_name!r} in {spec.to_json()}, replayed from its "
                    "recorded segments' seeds and actions. Preferences are in the prefloop JSON Lines "
                    "or Parquet export."
                ),
                data_format="arrow",
                jpeg_encoding=False,  # lossless: pixel observations stay as recorded
            )
    finally:
        env.close()
    return MinariSummary(
        dataset_id=dataset_id,
        path=str(minari.storage.get_dataset_path(dataset_id)),
        episodes=dataset.total_episodes,
        steps=dataset.total_steps,
        segments=len(run.segments),
    )


def _as_gymnasium_makes_it(env: gym.Env) -> gym.Env:
    """The env below prefloop's own wrappers (episode seeding; Tuple and nested Dict observations
    as a flat Dict for SB3; float64 actions rounded as recorded): observations in the env's own structure, as Minari's
    ``recover_environment`` gives them."""
    while isinstance(env, (EpisodeSeeder, LeafDictObservation, RecordedPrecisionActions)):
        env = env.env
    return env


def _serialisable_spec(env: gym.Env) -> gym.envs.registration.EnvSpec | None:
    """The env's Gymnasium spec if Minari can store it, else None (an env registered with a
    callable entry point cannot be serialised; its id and kwargs are in the description)."""
    try:
        env.spec.to_json()  # type: ignore[union-attr]
    except (AttributeError, ValueError, TypeError):
        return None
    return env.spec


def group_episodes(segments: list[Segment]) -> list[Episode]:
    """The episodes the segments lie in: segments of one episode share its seed and their
    episode actions are prefixes of the longest one's. Ordered by seed, then span."""
    by_seed: dict[int, list[Episode]] = {}
    for segment in sorted(segments, key=lambda s: -len(s.episode_actions)):
        episodes = by_seed.setdefault(segment.episode_seed, [])
        n = len(segment.episode_actions)
        home = next((e for e in episodes if np.array_equal(e.actions[:n], segment.episode_actions)), None)
        if home is None:
            home = Episode(segment.episode_seed, segment.episode_actions)
            episodes.append(home)
        home.segments.append(segment)
    return [e for seed in sorted(by_seed) for e in sorted(by_seed[seed], key=lambda e: len(e.actions))]


def _replay(env: gym.Env, episode: Episode, index: int, env_id: str) -> EpisodeBuffer:
    """The episode replayed from its seed and actions, checked against every segment in it."""
    observations = [env.reset(seed=episode.seed)[0]]
    rewards, terminations, truncations = [], [], []
    for t, action in enumerate(episode.actions):
        obs, reward, terminated, truncated, _ = env.step(_env_action(action))
        observations.append(obs)
        rewards.append(float(reward))
        terminations.append(bool(terminated))
        truncations.append(bool(truncated))
        if (terminated or truncated) and t < len(episode.actions) - 1:
            raise _mismatch(env_id, episode, t, "the episode ended before its recorded end")
    for segment in episode.segments:
        for t in range(segment.n_valid):
            step = segment.start_step + t
            if not _same(env.observation_space, observations[step], segment.obs[t]):
                raise _mismatch(env_id, episode, step, "the replayed observation differs from the recorded one")
        if segment.terminated and len(segment.episode_actions) == len(episode.actions) and not terminations[-1]:
            raise _mismatch(env_id, episode, len(rewards) - 1, "the recording terminated here, the replay did not")
    if not terminations[-1]:
        truncations[-1] = True  # the recording ends here; the episode may have gone on
    return EpisodeBuffer(
        id=index,
        seed=episode.seed,
        observations=_stack(env.observation_space, observations),
        actions=_stack(env.action_space, list(episode.actions)),
        rewards=rewards,
        terminations=terminations,
        truncations=truncations,
    )


def _mismatch(env_id: str, episode: Episode, step: int, what: str) -> DatasetError:
    return DatasetError(
        f"episode seed {episode.seed}, step {step}: {what}, so {env_id} is not deterministic given "
        "its seed and actions and its episodes cannot be rebuilt for Minari; export --format "
        "parquet instead (it holds the recorded segments)"
    )


def _same(space: gym.Space, replayed: Any, recorded: np.ndarray) -> bool:
    """Whether a replayed observation is the recorded one (Dict and Tuple observations are
    recorded flattened)."""
    flat = gym.spaces.flatten(space, replayed) if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)) else replayed
    flat = np.asarray(flat)
    if flat.size != recorded.size:
        return False
    return bool(np.allclose(flat.reshape(recorded.shape).astype(np.float64), recorded.astype(np.float64), atol=OBS_ATOL))


def _stack(space: gym.Space, values: list[Any]) -> Any:
    """A list of one space's values as Minari takes them: an array, or a dict or tuple of them."""
    if isinstance(space, gym.spaces.Dict):
        return {key: _stack(space[key], [v[key] for v in values]) for key in space.spaces}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(_stack(sub, [v[i] for v in values]) for i, sub in enumerate(space.spaces))
    return np.asarray(values, dtype=space.dtype)


def _env_action(action: np.ndarray) -> Any:
    return int(action) if np.issubdtype(np.asarray(action).dtype, np.integer) and np.ndim(action) == 0 else action
