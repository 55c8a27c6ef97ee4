"""Bradley-Terry reward ensembles: learn a per-step reward from preferences between segments.

- :class:`RewardEnsemble` (``ensemble.py``): ``M`` MLPs evaluated in one batched pass;
  ``predict`` is what the policy is trained on.
- :class:`CnnRewardEnsemble` (``cnn.py``): ``M`` CNNs for uint8 image observations, chosen by
  :func:`build_reward_model` for them; same ensemble, fit and normalisation.
- :class:`RewardModelConfig` and :func:`build_reward_model` (``config.py``); the Bradley-Terry
  losses (``losses.py``); :class:`RewardTrainer`, which fits an ensemble with them (``training.py``).
- Per-rater error rates estimated jointly with the reward, :class:`RaterEstimate` (``reliability.py``).
- :func:`save_reward_model` / :func:`load_reward_model` (``io.py``): safetensors + JSON, no pickle.

Absorbing steps are pinned at 0. Segments have a fixed length; when the episode terminated
inside a segment, the steps from ``n_valid`` on are the absorbing post-termination state and
contribute exactly 0 learned reward (they are masked). This is how variable-horizon environments
are handled: with the absorbing state at 0, the Bradley-Terry model can learn whether being alive
is good or bad (the reward offset is identifiable), so, e.g., CartPole's agent is not rewarded for
dying early. Consequently the output normalisation only *scales* rewards and never shifts them: a
shift would change the value of staying alive.
"""

from .cnn import CnnRewardEnsemble, is_image_observation_space
from .ensemble import MIN_REWARD_SCALE, RewardEnsemble, stack_segments
from .io import (
    METADATA_FILE,
    WEIGHTS_FILE,
    load_reward_metadata,
    load_reward_model,
    save_reward_model,
)
from .reliability import RaterEstimate
from .spaces import UnsupportedSpaceError, space_from_json, space_to_json
from .config import RewardModelConfig, build_reward_model
from .losses import bradley_terry_loss, rater_bradley_terry_loss
from .splits import validation_mask
from .training import FitStats, RewardTrainer

__all__ = [
    "METADATA_FILE",
    "MIN_REWARD_SCALE",
    "WEIGHTS_FILE",
    "CnnRewardEnsemble",
    "FitStats",
    "RaterEstimate",
    "RewardEnsemble",
    "RewardModelConfig",
    "RewardTrainer",
    "UnsupportedSpaceError",
    "bradley_terry_loss",
    "is_image_observation_space",
    "rater_bradley_terry_loss",
    "build_reward_model",
    "load_reward_metadata",
    "load_reward_model",
    "save_reward_model",
    "space_from_json",
    "space_to_json",
    "stack_segments",
    "validation_mask",
]
