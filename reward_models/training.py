"""Fitting a :class:`RewardEnsemble` to labelled pairs with the Bradley-Terry loss (Christiano et al. 2017).

- The teacher is modelled as answering at random with probability ``random_response``:
  ``P(right) = (1 - rr) * sigmoid(R_right - R_left) + rr / 2``.
- Each member trains on its own bootstrap resample of the training pairs, which is what makes the
  members disagree where data is thin (query selection uses that disagreement).
- A fixed fraction of pairs is held out for validation. The split hashes ``(seed, pair_id)``, so a
  pair stays on the same side across ``fit`` calls while the label set grows, and the optimiser and
  weights persist across calls (warm start).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from prefloop.types import LabeledPair

from .ensemble import RewardEnsemble, stack_segments

# Fewer pairs than this and all of them are used for training.
MIN_PAIRS_FOR_VALIDATION = 10
_EVAL_CHUNK_PAIRS = 512


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
        min_steps_per_fit: ... (a round with a few new labels still gets this many) ...
        epochs: ... and at most this many passes over the training pairs per call ...
        max_steps_per_fit: ... and at most this many gradient steps per call, so fitting stays
            cheap when thousands of labels have accumulated (the model is warm-started anyway).
        stop_accuracy: stop a ``fit`` after the first epoch in which the members' training
            accuracy (on non-tie pairs, measured on the epoch's own batches) reached this, as
            PEBBLE does; a warm-started model that already explains the new labels then costs
            one epoch, not ``epochs``. ``1.0`` (or more) disables early stopping.
        random_response: probability that the teacher answers at random (Christiano's 0.1).
        val_fraction: fraction of pairs held out for validation (0 disables validation).
        seed: seeds the initial weights, the validation split and the bootstrap resamples.
        normalize_inputs: standardise the network's inputs with the mean and standard deviation
            of the labelled segments' steps, updated at every fit (imitation's running norm does
            the same): without it an env whose observations mix scales (Reacher: joint
            velocities of ~9 next to a fingertip offset of ~0.15) hides the features the reward
            depends on, and the model memorises instead of generalising.
    """

    n_members: int = 3
    hidden_sizes: tuple[int, ...] = (64, 64)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    steps_per_label: int = 10
    min_steps_per_fit: int = 100
    epochs: int = 200
    max_steps_per_fit: int = 2000
    stop_accuracy: float = 0.97
    random_response: float = 0.1
    val_fraction: float = 0.2
    seed: int = 0
    normalize_inputs: bool = True

    def __post_init__(self) -> None:
        hidden = self.hidden_sizes
        if isinstance(hidden, int) or not all(_is_int(h) and h >= 1 for h in hidden):
            raise ValueError(f"hidden_sizes must be a tuple of positive ints, got {hidden!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in hidden))
        for name in ("n_members", "batch_size", "epochs", "max_steps_per_fit", "steps_per_label", "min_steps_per_fit"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if not (_is_real(self.lr) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (_is_real(self.weight_decay) and self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not (_is_real(self.random_response) and 0 <= self.random_response < 1):
            raise ValueError(f"random_response must be in [0, 1), got {self.random_response!r}")
        if not (_is_real(self.stop_accuracy) and 0 < self.stop_accuracy):
            raise ValueError(f"stop_accuracy must be a number > 0 (1.0 disables early stopping), got {self.stop_accuracy!r}")
        if not (_is_real(self.val_fraction) and 0 <= self.val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def build_reward_model(
    observation_space: gym.Space, action_space: gym.Space, config: RewardModelConfig
) -> RewardEnsemble:
    """A fresh :class:`RewardEnsemble` with ``config``'s members, hidden sizes and seed."""
    return RewardEnsemble(
        observation_space,
        action_space,
        n_members=config.n_members,
        hidden_sizes=config.hidden_sizes,
        seed=config.seed,
    )


def bradley_terry_loss(
    returns_left: torch.Tensor,
    returns_right: torch.Tensor,
    target: torch.Tensor,
    random_response: float,
) -> torch.Tensor:
    """Cross entropy between the soft target and the noisy Bradley-Terry preference probability.

    ``p = (1 - rr) * sigmoid(R_right - R_left) + rr / 2`` is the probability that the teacher picks
    right; the loss is ``-(t log p + (1 - t) log(1 - p))`` averaged over pairs and members. Computed
    in log space (``logaddexp`` of log-sigmoids), so huge return differences give finite losses
    and gradients.

    Args:
        returns_left, returns_right: ``(M, N)`` segment returns.
        target: ``(N,)`` (or ``(M, N)``) in [0, 1]: 0 left better, 1 right better, 0.5 equal.
        random_response: ``rr`` in [0, 1).

    Returns:
        A scalar tensor.
    """
    if not 0 <= random_response < 1:
        raise ValueError(f"random_response must be in [0, 1), got {random_response}")
    diff = returns_right - returns_left
    target = target.to(diff.dtype)
    log_sig_right = torch.nn.functional.logsigmoid(diff)
    log_sig_left = torch.nn.functional.logsigmoid(-diff)
    if random_response > 0:
        log_keep = math.log1p(-random_response)
        log_random = torch.tensor(math.log(random_response / 2), dtype=diff.dtype, device=diff.device)
        log_p_right = torch.logaddexp(log_sig_right + log_keep, log_random)
        log_p_left = torch.logaddexp(log_sig_left + log_keep, log_random)
    else:
        log_p_right, log_p_left = log_sig_right, log_sig_left
    loss = -(target * log_p_right + (1 - target) * log_p_left)
    return loss.mean()


@dataclass
class FitStats:
    """What one :meth:`RewardTrainer.fit` call did.

    Attributes:
        train_loss: loss (with the random-response term) after training, each member on all the
            training pairs, averaged.
        val_loss: the same on the held-out pairs, or None without validation pairs.
        val_accuracy: fraction of held-out non-tie pairs (target != 0.5) where the ensemble-mean
            P(right) is on the target's side of 0.5; None when there are none.
        n_train, n_val: pairs on each side of the split.
        steps: gradient steps taken.
    """

    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    n_train: int
    n_val: int
    steps: int


def validation_mask(keys: np.ndarray, seed: int, val_fraction: float) -> np.ndarray:
    """``(N,)`` bool: which keys (pair ids) are held out. Depends only on ``(seed, key)``."""
    u64 = np.uint64
    with np.errstate(over="ignore"):
        salt = _splitmix64(np.array([seed], dtype=np.int64).view(u64))
        hashed = _splitmix64(np.asarray(keys, dtype=np.int64).view(u64) ^ salt)
        uniform = (hashed >> u64(11)).astype(np.float64) / float(1 << 53)
    return uniform < val_fraction


def _splitmix64(z: np.ndarray) -> np.ndarray:
    u64 = np.uint64
    z = z + u64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> u64(30))) * u64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> u64(27))) * u64(0x94D049BB133111EB)
    return z ^ (z >> u64(31))


class RewardTrainer:
    """Fits a :class:`RewardEnsemble` to labelled pairs; one Adam over all members, kept across
    ``fit`` calls so each call warm-starts from the last.

    Raises:
        ValueError: when ``config`` disagrees with the model's members or hidden sizes.
    """

    def __init__(self, model: RewardEnsemble, config: RewardModelConfig) -> None:
        if config.n_members != model.n_members or config.hidden_sizes != model.hidden_sizes:
            raise ValueError(
                f"config says n_members={config.n_members}, hidden_sizes={config.hidden_sizes} but the "
                f"model has n_members={model.n_members}, hidden_sizes={model.hidden_sizes}; build the "
                "model with build_reward_model(obs_space, act_space, config) or make the config match"
            )
        self.model = model
        self.config = config
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self._n_fits = 0
        self.pairs_fitted = 0  # labelled pairs seen by earlier fits: the per-label budget counts the rest

    def fit(self, pairs: Sequence[LabeledPair], pseudo_pairs: Sequence[LabeledPair] = ()) -> FitStats:
        """Train on ``pairs`` (all labelled pairs so far, not just the new ones).

        ``pseudo_pairs`` (SURF's model-made labels, ``prefloop.semi_supervised``) join the training
        side only: never validated on, not counted in the per-label step budget, not used for the
        input statistics.

        Raises:
            ValueError: no pairs, a target outside [0, 1], or segments of mismatched shapes.
        """
        if len(pairs) == 0:
            raise ValueError("fit needs at least one labelled pair")
        cfg, model = self.config, self.model
        targets = np.array([p.target for p in pairs], dtype=np.float64)
        bad = np.flatnonzero(~((targets >= 0) & (targets <= 1)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"pair {i} (pair_id={pairs[i].pair_id}) has target {pairs[i].target}; expected [0, 1]")

        keys = np.array([i if p.pair_id is None else p.pair_id for i, p in enumerate(pairs)], dtype=np.int64)
        is_val = np.zeros(len(pairs), dtype=bool)
        if len(pairs) >= MIN_PAIRS_FOR_VALIDATION and cfg.val_fraction > 0:
            is_val = validation_mask(keys, cfg.seed, cfg.val_fraction)
            if is_val.all():
                is_val[:] = False
        if cfg.normalize_inputs:
            self._update_input_normalization(pairs)
        n_labelled = len(pairs)
        if pseudo_pairs:
            pairs = [*pairs, *pseudo_pairs]
            targets = np.concatenate([targets, [p.target for p in pseudo_pairs]])
            is_val = np.concatenate([is_val, np.zeros(len(pseudo_pairs), dtype=bool)])
        train_idx = np.flatnonzero(~is_val)
        val_idx = np.flatnonzero(is_val)

        features, mask, target_t = self._encode(pairs, targets)

        rng = np.random.default_rng([cfg.seed, self._n_fits])
        self._n_fits += 1
        n_train, members = len(train_idx), model.n_members
        boot = train_idx[rng.integers(0, n_train, size=(members, n_train))]
        steps_per_epoch = math.ceil(n_train / cfg.batch_size)
        new_pairs = max(0, n_labelled - self.pairs_fitted)
        self.pairs_fitted = max(self.pairs_fitted, n_labelled)
        budget = max(cfg.min_steps_per_fit, cfg.steps_per_label * new_pairs)
        total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps_per_fit, budget)
        length, dim = features.shape[-2], features.shape[-1]

        steps = 0
        while steps < total_steps:
            order = rng.permuted(boot, axis=1)  # a fresh shuffle of each member's resample per epoch
            correct = decided = 0
            for start in range(0, n_train, cfg.batch_size):
                if steps >= total_steps:
                    break
                idx = torch.as_tensor(order[:, start : start + cfg.batch_size], device=features.device)
                batch = idx.shape[1]
                # Each member gets its own rows: (M, batch * 2 segments, L, in).
                returns = model.returns_from_features(
                    features[idx].reshape(members, batch * 2, length, dim),
                    mask[idx].reshape(members, batch * 2, length),
                ).reshape(members, batch, 2)
                batch_targets = target_t[idx]
                loss = bradley_terry_loss(returns[..., 0], returns[..., 1], batch_targets, cfg.random_response)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                steps += 1
                with torch.no_grad():
                    non_tie = batch_targets != 0.5
                    right_better = returns[..., 1] > returns[..., 0]
                    correct += int((right_better == (batch_targets > 0.5))[non_tie].sum())
                    decided += int(non_tie.sum())
            if decided == 0 or correct / decided >= cfg.stop_accuracy:
                break

        train_loss, _ = self._evaluate(features, mask, target_t, train_idx)
        val_loss, val_accuracy = (None, None)
        if len(val_idx):
            val_loss, val_accuracy = self._evaluate(features, mask, target_t, val_idx)
        return FitStats(
            train_loss=float(train_loss),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            n_train=int(n_train),
            n_val=int(len(val_idx)),
            steps=steps,
        )

    def counters(self) -> dict[str, int]:
        """The trainer's progress besides the optimiser: fits so far (seeds each fit's shuffles) and
        labelled pairs already fitted (the per-label budget counts the rest)."""
        return {"n_fits": self._n_fits, "pairs_fitted": self.pairs_fitted}

    def restore_counters(self, counters: dict[str, int]) -> None:
        """Continue from :meth:`counters` of a checkpoint."""
        self._n_fits = int(counters.get("n_fits", 0))
        self.pairs_fitted = int(counters.get("pairs_fitted", 0))

    def _update_input_normalization(self, pairs: Sequence[LabeledPair]) -> None:
        """Standardise inputs with the statistics of the labelled segments' real steps (each distinct segment once)."""
        seen: dict[int, object] = {}
        for p in pairs:
            seen.setdefault(id(p.left), p.left)
            seen.setdefault(id(p.right), p.right)
        obs, actions, mask = stack_segments(list(seen.values()))  # type: ignore[arg-type]
        real = mask > 0
        if real.sum() < 2:
            return
        features = self.model.raw_features(obs[real], actions[real]).astype(np.float64)
        self.model.set_input_normalization(features.mean(0), features.std(0))

    def _encode(
        self, pairs: Sequence[LabeledPair], targets: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All pairs encoded once: features ``(P, 2, L, in)``, mask ``(P, 2, L)``, targets ``(P,)``."""
        model = self.model
        segments = [p.left for p in pairs] + [p.right for p in pairs]
        obs, actions, mask = stack_segments(segments)
        real = mask > 0
        model.obs_encoder.check(obs[real])
        model.action_encoder.check(actions[real])
        n, length = mask.shape
        device = model.device
        with torch.no_grad():
            feats = model.encode(
                torch.as_tensor(obs.reshape(n * length, *obs.shape[2:]), device=device),
                torch.as_tensor(actions.reshape(n * length, *actions.shape[2:]), device=device),
            )
        p = len(pairs)
        # Rows 0..P-1 are the left segments, P..2P-1 the right ones.
        feats = feats.reshape(2, p, length, -1).transpose(0, 1).contiguous()
        mask_t = torch.as_tensor(mask, device=device).reshape(2, p, length).transpose(0, 1).contiguous()
        return feats, mask_t, torch.as_tensor(targets, dtype=torch.float32, device=device)

    @torch.no_grad()
    def _evaluate(
        self, features: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, idx: np.ndarray
    ) -> tuple[float, float | None]:
        """Mean loss of all members on pairs ``idx`` and the ensemble-mean accuracy on non-ties."""
        model, rr = self.model, self.config.random_response
        loss_sum, correct, decided = 0.0, 0, 0
        length, dim = features.shape[-2], features.shape[-1]
        for start in range(0, len(idx), _EVAL_CHUNK_PAIRS):
            sel = torch.as_tensor(idx[start : start + _EVAL_CHUNK_PAIRS], device=features.device)
            k = sel.shape[0]
            returns = model.returns_from_features(
                features[sel].reshape(k * 2, length, dim), mask[sel].reshape(k * 2, length)
            ).reshape(model.n_members, k, 2)
            t = targets[sel]
            loss_sum += float(bradley_terry_loss(returns[..., 0], returns[..., 1], t, rr)) * k
            p_right = torch.sigmoid(returns[..., 1] - returns[..., 0]).mean(0)
            not_tie = t != 0.5
            correct += int(((p_right > 0.5) == (t > 0.5))[not_tie].sum())
            decided += int(not_tie.sum())
        return loss_sum / len(idx), (correct / decided if decided else None)
