"""What a reward ensemble is and how it is fitted: :class:`RewardModelConfig`, and
:func:`build_reward_model`, which turns one into a fresh ensemble for an env's spaces."""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from prefloop.import_paths import is_import_path
from prefloop.import_paths import load as load_import_path

from .cnn import CNN_TORSOS, CnnRewardEnsemble, is_image_observation_space
from .ensemble import MemberFactory, RewardEnsemble

RATER_MODELS = ("reliability", "plain")


@dataclass(frozen=True)
class RewardModelConfig:
    """Reward ensemble architecture and training settings.

    Attributes:
        n_members: ensemble size.
        hidden_sizes: hidden layer widths (``()`` for a linear model).
        lr: Adam learning rate.
        weight_decay: Adam L2 weight decay.
        batch_size: pairs per gradient step (per member).
        steps_per_label: gradient steps a ``fit`` call may take per label it has not fitted before
            (at least ``min_steps_per_fit``): the cost of reward learning is bounded per label, so
            a model that cannot reach ``stop_accuracy`` (noisy answers, a hard task) costs at most
            ``steps_per_label`` steps per label over the whole run, not a full cap at every round ...
        warm_steps_per_label: ... and this many per new label once the model has been fitted on
            at least ``warm_after_labels`` labels (None: half of ``steps_per_label``, at least 1).
            A model warm-started from many labels already ranks what they taught it, and a round
            adds a few to many: half the steps cut reward learning from 10-12% to 7-9% of a default
            run on envs without a preset (200 labels), with returns as before (docs/benchmarks.md,
            "Warm fits") ...
        warm_after_labels: ... Below it every label keeps the full budget: with few labels each one
            moves the model, and the first models decide what the policy learns (Pendulum at 50
            labels failed more often when they got fewer steps), while reward learning is a small
            part of such a run anyway ...
        min_steps_per_fit: ... (a round with a few new labels still gets this many) ...
        epochs: ... and at most this many passes over the training pairs per call ...
        max_steps_per_fit: ... and at most this many gradient steps per call, so fitting stays
            cheap when thousands of labels have accumulated (the model is warm-started anyway).
        stop_accuracy: stop a ``fit`` after the first epoch, past half of the fit's step budget, in
            which the members' training accuracy (on non-tie pairs, measured on the epoch's own
            batches) reached this, as PEBBLE does. Stopping as soon as an epoch reached it (before)
            left models undertrained: on random play of MuJoCo and classic-control envs, held-out
            accuracy rose by up to 0.09 at 50 labels with the floor
            (``benchmarks/reward_defaults_ablation.py``, docs/benchmarks.md). ``1.0`` (or more)
            disables early stopping.
        random_response: probability that the teacher answers at random (Christiano's 0.1); with
            several raters and ``rater_model="reliability"``, ``random_response / 2`` is the prior
            mean of each rater's error rate instead.
        rater_model: ``"reliability"`` (per-rater error rates estimated jointly with the reward,
            see :mod:`prefloop.reward_models.reliability`) or ``"plain"`` (one global
            ``random_response`` for everyone, every label counted alike).
        flag_error_rate: a rater whose estimated error rate reaches this is flagged and their
            labels get weight 0 in the fit (kept in the store; unflagged when they improve).
        prior_labels: weight, in labels, of the prior on each rater's error rate: a rater with far
            fewer labels than this keeps about the prior.
        temperature_prior_sd: standard deviation of the normal prior on each rater's log
            temperature ``log beta`` (mean 0): a rater's ``beta`` leaves 1 only as far as their
            labels support it (``reward_models/reliability.py``).
        rater_estimates_per_fit: E-steps (re-estimates of the raters) spread evenly over each
            fit's gradient steps, plus one at its end: EM alternates them with the reward model's
            steps, and one per fit left the first fit's estimates far from converged.
        flagged_answer_weight: weight in the fit of an answer the server flagged (e.g. faster than
            the clips can be watched); the answer is kept and still scored for its rater.
        val_fraction: fraction of pairs held out for validation and never trained on. 0 (the
            default) trains on every label and measures accuracy *prequentially*: each new label
            is predicted by the model before the fit that learns it (``FitStats.val_accuracy``).
            Labels are the most expensive data here: holding out a fifth of 50 cost up to 0.07 of
            held-out accuracy on random play of MuJoCo envs.
        bootstrap: each member trains on its own bootstrap resample of the training pairs (True),
            or all members on all pairs, differing by their initial weights and batch order (False,
            the default, as PEBBLE and B-Pref do). A resample leaves out about a third of the pairs
            for each member, which at small budgets costs more than the diversity it buys; the
            members still disagree where data is thin (initial weights), which queries use. With
            several raters and ``rater_model="reliability"`` members always resample: each rater
            is judged by the members that did not train on their labels.
        seed: seeds the initial weights, the validation split and the batch order.
        normalize_inputs: standardise the network's inputs with the mean and standard deviation
            of the labelled segments' steps, updated at every fit (imitation's running norm does
            the same): without it an env whose observations mix scales (Reacher: joint
            velocities of ~9 next to a fingertip offset of ~0.15) hides the features the reward
            depends on, and the model memorises instead of generalising. Image observations are
            never standardised per pixel: the CNN scales them by 1/255 (see ``cnn.py``).
        member_factory: your own member network (see
            :data:`prefloop.reward_models.ensemble.MemberFactory`), or its import path
            ``"package.module:make_net"``; None: the stacked MLPs of ``hidden_sizes`` (the CNN
            of ``cnn`` for image observations). Saved models record its import path; loading
            one needs the same factory.
        cnn: the convolutional torso for image observations (uint8 frames or frame stacks, which
            get a :class:`~prefloop.reward_models.cnn.CnnRewardEnsemble` automatically unless a
            ``member_factory`` is given): ``"nature"`` (Nature-DQN, 512 units) or
            ``"christiano"`` (Christiano et al.'s smaller Atari net, 64 units; about a quarter of
            the arithmetic, for CPU-only runs).
        action_squares: Box actions also enter the MLP squared (after scaling to [-1, 1]), so a
            control cost ``sum(a**2)`` -- in nearly every MuJoCo and DeepMind Control reward -- is
            a linear function of the inputs. Without them the model had to find that curve from
            comparisons and mostly did not: held-out accuracy at 200 random-play labels, Reacher
            0.63 without and 0.82 with, Pusher 0.74 and 0.82, within 0.01 on six other envs
            (docs/benchmarks.md). A feature that only correlates with the return can mislead too:
            Pendulum at 50 labels failed on more seeds with it. ``None``: on, unless the env's
            preset says otherwise (``TrainConfig.resolve``: the named presets were measured
            without it). No effect on other action spaces, on the CNN or on a
            ``member_factory``'s network.
    """

    n_members: int = 3
    hidden_sizes: tuple[int, ...] = (64, 64)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    steps_per_label: int = 10
    warm_steps_per_label: int | None = None
    warm_after_labels: int = 50
    min_steps_per_fit: int = 30
    epochs: int = 200
    max_steps_per_fit: int = 2000
    stop_accuracy: float = 0.97
    random_response: float = 0.1
    rater_model: str = "reliability"
    flag_error_rate: float = 0.3
    prior_labels: float = 5.0
    temperature_prior_sd: float = 0.5
    rater_estimates_per_fit: int = 8
    flagged_answer_weight: float = 0.25
    val_fraction: float = 0.0
    seed: int = 0
    normalize_inputs: bool = True
    bootstrap: bool = False
    member_factory: MemberFactory | str | None = None
    cnn: str = "nature"
    action_squares: bool | None = None

    def fits_warm(self, labels_fitted: int) -> bool:
        """Whether a fit of a model whose earlier fits have seen ``labels_fitted`` labels is *warm*:
        ``warm_after_labels`` or more (its budget per new label is then ``warm_steps_per_label``)."""
        return labels_fitted >= self.warm_after_labels

    def __post_init__(self) -> None:
        factory = self.member_factory
        if not (factory is None or callable(factory) or (isinstance(factory, str) and is_import_path(factory))):
            raise ValueError(
                f"member_factory must be a function (observation_space, action_space) -> torch.nn.Module or its "
                f"import path package.module:name, got {str(factory)[:80]!r}"
            )
        hidden = self.hidden_sizes
        if isinstance(hidden, int) or not all(_is_int(h) and h >= 1 for h in hidden):
            raise ValueError(f"hidden_sizes must be a tuple of positive ints, got {hidden!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in hidden))
        for name in ("n_members", "batch_size", "epochs", "max_steps_per_fit", "steps_per_label", "warm_after_labels", "min_steps_per_fit",
                     "rater_estimates_per_fit"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.warm_steps_per_label is not None and not (_is_int(self.warm_steps_per_label) and self.warm_steps_per_label >= 1):
            raise ValueError(f"warm_steps_per_label must be an int >= 1 or None (half of steps_per_label), "
                             f"got {self.warm_steps_per_label!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if not (_is_real(self.lr) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (_is_real(self.weight_decay) and self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (_is_real(self.random_response) and 0 <= self.random_response < 1):
            raise ValueError(f"random_response must be in [0, 1), got {self.random_response!r}")
        if self.rater_model not in RATER_MODELS:
            raise ValueError(f"rater_model must be one of {', '.join(RATER_MODELS)}, got {self.rater_model!r}")
        if not (_is_real(self.flag_error_rate) and 0 < self.flag_error_rate <= 1):
            raise ValueError(f"flag_error_rate must be in (0, 1] (1 flags nobody short of always wrong), got {self.flag_error_rate!r}")
        if not (_is_real(self.prior_labels) and 0 < self.prior_labels and math.isfinite(self.prior_labels)):
            raise ValueError(f"prior_labels must be a finite number > 0, got {self.prior_labels!r}")
        if not (_is_real(self.temperature_prior_sd) and 0 < self.temperature_prior_sd and math.isfinite(self.temperature_prior_sd)):
            raise ValueError(f"temperature_prior_sd must be a finite number > 0, got {self.temperature_prior_sd!r}")
        if not (_is_real(self.flagged_answer_weight) and 0 <= self.flagged_answer_weight <= 1):
            raise ValueError(f"flagged_answer_weight must be in [0, 1], got {self.flagged_answer_weight!r}")
        if not (_is_real(self.stop_accuracy) and 0 < self.stop_accuracy):
            raise ValueError(f"stop_accuracy must be a number > 0 (1.0 disables early stopping), got {self.stop_accuracy!r}")
        if self.cnn not in CNN_TORSOS:
            raise ValueError(f"cnn must be one of {', '.join(CNN_TORSOS)}, got {self.cnn!r}")
        if not (self.action_squares is None or isinstance(self.action_squares, bool)):
            raise ValueError(f"action_squares must be true, false or None, got {self.action_squares!r}")
        if not isinstance(self.bootstrap, bool):
            raise ValueError(f"bootstrap must be true or false, got {self.bootstrap!r}")
        if not (_is_real(self.val_fraction) and 0 <= self.val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")


def steps_per_new_label(config: RewardModelConfig, labels_fitted: int) -> int:
    """Gradient steps a fit may take per new label, when earlier fits have seen ``labels_fitted``
    labels: ``steps_per_label`` below ``warm_after_labels``, then ``warm_steps_per_label`` (None:
    half of ``steps_per_label``, at least 1)."""
    if not config.fits_warm(labels_fitted):
        return config.steps_per_label
    if config.warm_steps_per_label is not None:
        return config.warm_steps_per_label
    return max(1, config.steps_per_label // 2)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def build_reward_model(
    observation_space: gym.Space, action_space: gym.Space, config: RewardModelConfig, seed: int | None = None
) -> RewardEnsemble:
    """A fresh ensemble with ``config``'s members, hidden sizes and seed (``seed`` overrides it):
    a :class:`CnnRewardEnsemble` with ``config.cnn``'s torso for image observations (uint8 Box
    0..255 of 2 or 3 dimensions) unless ``config.member_factory`` is given, else
    :class:`RewardEnsemble` (the stacked MLPs, or the factory's members)."""
    seed = config.seed if seed is None else seed
    factory = member_factory_of(config)
    if factory is None and is_image_observation_space(observation_space):
        conv, features = CNN_TORSOS[config.cnn]
        return CnnRewardEnsemble(
            observation_space, action_space, n_members=config.n_members, hidden_sizes=config.hidden_sizes,
            seed=seed, conv=conv, torso_features=features,
        )
    return RewardEnsemble(
        observation_space,
        action_space,
        n_members=config.n_members,
        hidden_sizes=config.hidden_sizes,
        seed=seed,
        member_factory=factory,
        action_squares=config.action_squares is not False,
    )


def member_factory_of(config: RewardModelConfig) -> MemberFactory | None:
    """``config.member_factory`` as a callable (an import path is imported).

    Raises:
        ValueError: the path does not import (one line: which, and what to do).
    """
    factory = config.member_factory
    if isinstance(factory, str):
        return load_import_path(factory, "reward model member_factory")
    return factory
