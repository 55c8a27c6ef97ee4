"""Fitting a :class:`RewardEnsemble` to labelled pairs with the Bradley-Terry loss (Christiano et al. 2017).

- ``rater_model="plain"``: the teacher is modelled as answering at random with probability
  ``random_response``: ``P(right) = (1 - rr) * sigmoid(R_right - R_left) + rr / 2``, and a pair's
  target is the mean of its labels.
- ``rater_model="reliability"`` (default): when the labels come from several raters, each label is
  its own row and each rater gets an estimated error rate, fitted jointly with the reward model
  (:mod:`prefloop.reward_models.reliability`); flagged raters' labels get weight 0. With a single
  rater (or pairs that do not say who answered) it is the plain loss.
- Every member trains on every labelled pair (``bootstrap=False``, as PEBBLE does); their own initial
  weights and batch orders make them disagree where data is thin (query selection uses that).
  ``bootstrap=True`` gives each its own resample instead, and so does the reliability model with
  several raters: its E-step judges each label by the members that did not train on it.
- Accuracy is prequential by default: each fit first predicts the labels no fit has seen, then
  learns them, so no label is withheld from training. With ``val_fraction > 0`` a fixed fraction is
  held out instead; the split hashes ``(seed, pair_id)``, so a pair stays on the same side across
  ``fit`` calls while the label set grows.
- The optimiser and weights persist across calls (warm start).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prefloop.types import LabeledPair

from .config import RewardModelConfig, steps_per_new_label
from .ensemble import RewardEnsemble, stack_segments
from .losses import bradley_terry_loss, rater_bradley_terry_loss
from .splits import pair_keys, validation_mask
from .subnormals import flush_subnormals
from .reliability import (
    RaterEstimate,
    RaterLabels,
    estimate_error_rates,
    loss_error_rates,
    mostly_contradicted,
)

# Fewer pairs than this and all of them are used for training.
MIN_PAIRS_FOR_VALIDATION = 10
# No E-step (rater re-estimate) before this many gradient steps of a fit (see fit()).
FIRST_E_STEP = 100
# Prequential accuracy (val_fraction=0) is over the newest this many labels predicted before their fit.
PREQUENTIAL_WINDOW = 50
_EVAL_CHUNK_PAIRS = 512


def _early_stop_floor(total_steps: int) -> int:
    """Gradient steps a fit takes before it may stop early: half of its budget. Stopping after the
    first epoch that reached ``stop_accuracy`` (before) left models undertrained (HalfCheetah at 50
    labels: 0.72-0.78 held-out accuracy against 0.80-0.83 with this floor); a fixed floor of 100
    steps per fit cost 26 steps per label over a 50-label run's 13 small rounds, against 6 here."""
    return max(1, total_steps // 2)


@dataclass
class _Rows:
    """What the trainer fits: one row per pair (plain) or per label (reliability).

    ``pair`` indexes the encoded pairs; ``error_rate`` and ``weight`` are None for the plain loss
    (one global ``random_response``); ``key`` is the pair id (validation split, so all labels of a
    pair are on the same side); ``labels`` is set in reliability mode."""

    pair: np.ndarray
    target: torch.Tensor
    key: np.ndarray
    error_rate: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    temperature: torch.Tensor | None = None
    labels: RaterLabels | None = None

    def with_pseudo_pairs(self, first_pair: int, targets: np.ndarray, random_response: float) -> "_Rows":
        """These rows plus one per pseudo-labelled pair (encoded from ``first_pair`` on); in
        reliability mode they have the prior error rate ``random_response / 2``, temperature 1 and weight 1."""
        n = len(targets)
        extra_pairs = np.arange(first_pair, first_pair + n)
        rows = _Rows(
            pair=np.concatenate([self.pair, extra_pairs]),
            target=torch.cat([self.target, torch.as_tensor(targets, dtype=self.target.dtype, device=self.target.device)]),
            key=np.concatenate([self.key, -1 - extra_pairs]),
            labels=self.labels,
        )
        if self.error_rate is not None and self.weight is not None:
            rows.error_rate = torch.cat([self.error_rate, torch.full((n,), random_response / 2, dtype=self.error_rate.dtype)])
            rows.weight = torch.cat([self.weight, torch.ones(n, dtype=self.weight.dtype)])
        if self.temperature is not None:
            rows.temperature = torch.cat([self.temperature, torch.ones(n, dtype=self.temperature.dtype)])
        return rows


@dataclass
class FitStats:
    """What one :meth:`RewardTrainer.fit` call did.

    Attributes:
        train_loss: loss (with the random-response term) after training, each member on all the
            training pairs, averaged.
        val_loss: the same on the held-out pairs, or None without validation pairs (always None
            with ``val_fraction=0``).
        val_accuracy: with a held-out split (``val_fraction > 0``), the fraction of held-out
            non-tie pairs (target != 0.5) where the ensemble-mean P(right) is on the target's side
            of 0.5. With ``val_fraction=0`` (the default) the same fraction over the last
            ``PREQUENTIAL_WINDOW`` non-tie pairs *predicted before the model was fitted on them*
            (prequential accuracy: each label is a test label once, then a training label). None
            when there are none yet.
        n_train: pairs trained on.
        n_val: pairs ``val_accuracy`` is measured on.
        steps: gradient steps taken.
    """

    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    n_train: int
    n_val: int
    steps: int


class RewardTrainer:
    """Fits a :class:`RewardEnsemble` to labelled pairs; one Adam over all members, kept across
    ``fit`` calls so each call warm-starts from the last.

    Raises:
        ValueError: when ``config`` disagrees with the model's members or hidden sizes.
    """

    def __init__(self, model: RewardEnsemble, config: RewardModelConfig) -> None:
        same_members = model.member_factory is not None or config.hidden_sizes == model.hidden_sizes
        if config.n_members != model.n_members or not same_members:
            raise ValueError(
                f"config says n_members={config.n_members}, hidden_sizes={config.hidden_sizes} but the "
                f"model has n_members={model.n_members}, hidden_sizes={model.hidden_sizes}; build the "
                "model with build_reward_model(obs_space, act_space, config) or make the config match"
            )
        self.model = model
        self.config = config
        # foreach: one multi-tensor update of all parameters instead of a Python loop over them;
        # the same arithmetic, bit for bit, and ~10% of a fit on a CPU, where torch's default is the loop.
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True)
        self._n_fits = 0
        self.pairs_fitted = 0  # labelled pairs seen by earlier fits: the per-label budget counts the rest
        # Prequential accuracy: pair keys fitted before, and whether the model, before fitting a
        # new pair, put it on the side its label took (newest last).
        self._fitted_keys: set[int] = set()
        self._predicted_right: deque[bool] = deque(maxlen=PREQUENTIAL_WINDOW)
        # Each rater's estimated reliability after the last fit (None: plain loss, or one rater).
        self.rater_estimates: list[RaterEstimate] | None = None

    @flush_subnormals()
    def fit(
        self, pairs: Sequence[LabeledPair], pseudo_pairs: Sequence[LabeledPair] = (),
        checks: Mapping[str, tuple[int, int]] | None = None,
    ) -> FitStats:
        """Train on ``pairs`` (all labelled pairs so far, not just the new ones), with subnormal
        floats flushed to 0 (:func:`~.subnormals.flush_subnormals`), whatever the caller's mode.

        With ``rater_model="reliability"`` and pairs whose ``extra["votes"]`` name at least two
        raters (or hold answers with flags, weighted ``flagged_answer_weight``), each label is a
        row and the raters' error rates and temperatures are re-estimated
        ``rater_estimates_per_fit`` times over the step budget and at the end (EM,
        :attr:`rater_estimates`).

        ``pseudo_pairs`` (SURF's model-made labels, ``prefloop.training.semi_supervised``) join the training
        side only: never validated on, not counted in the per-label step budget, not used for the
        input statistics, nor for the raters' estimates (they enter with the prior error rate).

        ``checks``: per rater, gold checks answered left or right and how many were wrong
        (:func:`prefloop.training.rater_checks.tally_checks`): evidence on the raters only, in
        reliability mode; a rater with checks and no labels is estimated too.

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

        rows = self._rows(pairs, targets, model.device, checks or {})
        if cfg.val_fraction == 0:
            self._predict_new_pairs(pairs, targets)
        is_val = np.zeros(len(rows.pair), dtype=bool)
        if len(pairs) >= MIN_PAIRS_FOR_VALIDATION and cfg.val_fraction > 0:
            is_val = validation_mask(rows.key, cfg.seed, cfg.val_fraction)
            if is_val.all():
                is_val[:] = False
        if cfg.normalize_inputs:
            self._update_input_normalization(pairs)
        n_labelled = len(pairs)
        if pseudo_pairs:
            pseudo_targets = np.array([p.target for p in pseudo_pairs], dtype=np.float64)
            rows = rows.with_pseudo_pairs(n_labelled, pseudo_targets, cfg.random_response)
            pairs = [*pairs, *pseudo_pairs]
            targets = np.concatenate([targets, pseudo_targets])
            is_val = np.concatenate([is_val, np.zeros(len(pseudo_pairs), dtype=bool)])
        train_idx = np.flatnonzero(~is_val)
        val_idx = np.flatnonzero(is_val)

        features, mask, _ = self._encode(pairs, targets)

        rng = np.random.default_rng([cfg.seed, self._n_fits])
        self._n_fits += 1
        n_train, members = len(train_idx), model.n_members
        if cfg.bootstrap or rows.labels is not None:
            # Several raters: the E-step scores each label with the members that did not train on
            # it (out of bag); members that all memorised an adversary's labels find them "right".
            boot = train_idx[rng.integers(0, n_train, size=(members, n_train))]
        else:
            boot = np.tile(train_idx, (members, 1))
        steps_per_epoch = math.ceil(n_train / cfg.batch_size)
        new_pairs = max(0, n_labelled - self.pairs_fitted)
        budget = max(cfg.min_steps_per_fit, steps_per_new_label(cfg, self.pairs_fitted) * new_pairs)
        self.pairs_fitted = max(self.pairs_fitted, n_labelled)
        total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps_per_fit, budget)
        length, dim = features.shape[-2], features.shape[-1]
        pair_of_row = torch.as_tensor(rows.pair, device=features.device)
        # E-steps spread over the budget, the first after FIRST_E_STEP steps: an E-step on a
        # barely trained model (10 Adam steps) found the careful raters "wrong", and weight 0 then
        # locked that in (a unit test caught it); an early one, on a model that has learnt what
        # most raters agree on but not yet memorised each label, is what finds an adversarial
        # rater in a run's first round.
        estimate_every = max(1, math.ceil(total_steps / cfg.rater_estimates_per_fit))
        first_estimate = max(estimate_every, FIRST_E_STEP)

        steps = 0
        while steps < total_steps:
            order = rng.permuted(boot, axis=1)  # a fresh shuffle of each member's resample per epoch
            correct = decided = 0
            for start in range(0, n_train, cfg.batch_size):
                if steps >= total_steps:
                    break
                idx = torch.as_tensor(order[:, start : start + cfg.batch_size], device=features.device)
                batch = idx.shape[1]
                pair_idx = pair_of_row[idx]
                # Each member gets its own rows: (M, batch * 2 segments, L, in).
                returns = model.returns_from_features(
                    features[pair_idx].reshape(members, batch * 2, length, dim),
                    mask[pair_idx].reshape(members, batch * 2, length),
                ).reshape(members, batch, 2)
                batch_targets = rows.target[idx]
                if rows.error_rate is None:
                    loss = bradley_terry_loss(returns[..., 0], returns[..., 1], batch_targets, cfg.random_response)
                    counted = batch_targets != 0.5
                else:
                    assert rows.weight is not None
                    batch_weights = rows.weight[idx]
                    loss = rater_bradley_terry_loss(
                        returns[..., 0], returns[..., 1], batch_targets, rows.error_rate[idx], batch_weights,
                        None if rows.temperature is None else rows.temperature[idx],
                    )
                    counted = (batch_targets != 0.5) & (batch_weights > 0)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                steps += 1
                if (rows.labels is not None and steps >= first_estimate and steps < total_steps
                        and (steps - first_estimate) % estimate_every == 0):
                    # EM: re-estimate the raters from what the model has learnt so far in this call.
                    self._estimate_raters(features, mask, rows, boot)
                with torch.no_grad():
                    right_better = returns[..., 1] > returns[..., 0]
                    correct += int((right_better == (batch_targets > 0.5))[counted].sum())
                    decided += int(counted.sum())
            if decided == 0:
                break  # every pair is a tie or weighted out: nothing to learn
            # A model that reaches stop_accuracy on the training pairs within an epoch or two is
            # far from done: held-out accuracy kept rising with more steps (_early_stop_floor).
            if steps >= _early_stop_floor(total_steps) and correct / decided >= cfg.stop_accuracy:
                break
        if rows.labels is not None:
            self._estimate_raters(features, mask, rows, boot)

        train_loss, _ = self._evaluate(features, mask, rows, train_idx)
        val_loss, val_accuracy, n_val = None, None, len(val_idx)
        if len(val_idx):
            val_loss, val_accuracy = self._evaluate(features, mask, rows, val_idx)
        elif self._predicted_right:
            val_accuracy, n_val = float(np.mean(self._predicted_right)), len(self._predicted_right)
        return FitStats(
            train_loss=float(train_loss),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            n_train=int(n_train),
            n_val=int(n_val),
            steps=steps,
        )

    @torch.no_grad()
    def _predict_new_pairs(self, pairs: Sequence[LabeledPair], targets: np.ndarray) -> None:
        """Score the pairs no earlier fit has seen with the model as it is (their prequential
        test), then count them as seen. Not on the first fit (an untrained model's guesses say
        nothing), nor on the first after a resume (which pairs the checkpoint had seen is not kept)."""
        keys = pair_keys(pairs).tolist()
        new = [i for i, key in enumerate(keys) if key not in self._fitted_keys and targets[i] != 0.5]
        if new and self._fitted_keys:  # empty on the first fit and on the first after a resume
            p_right = self.model.preference_probs([pairs[i].left for i in new], [pairs[i].right for i in new]).mean(0)
            self._predicted_right.extend(bool(p > 0.5) == bool(targets[i] > 0.5) for p, i in zip(p_right, new))
        self._fitted_keys.update(keys)

    def _rows(
        self, pairs: Sequence[LabeledPair], targets: np.ndarray, device: torch.device, checks: Mapping[str, tuple[int, int]]
    ) -> _Rows:
        """One row per pair (plain loss), or one per label when the reliability model applies."""
        cfg = self.config
        keys = pair_keys(pairs)
        votes = [p.extra.get("votes") for p in pairs]
        raters = {v[0] for pair_votes in votes if pair_votes for v in pair_votes} | set(checks)
        flagged_answers = any(len(v) > 2 and v[2] for pair_votes in votes if pair_votes for v in pair_votes)
        if cfg.rater_model != "reliability" or not (len(raters) >= 2 or flagged_answers) or any(not v for v in votes):
            self.rater_estimates = None
            return _Rows(pair=np.arange(len(pairs)), target=torch.as_tensor(targets, dtype=torch.float32, device=device), key=keys)
        rater_ids = tuple(sorted(raters))
        index = {r: i for i, r in enumerate(rater_ids)}
        pair_of, rater_of, target_of, weight_of, gold_of = [], [], [], [], []
        for i, (pair, pair_votes) in enumerate(zip(pairs, votes)):
            gold = pair.extra.get("gold_choice")
            gold_target = getattr(gold, "target", None)
            for vote in pair_votes:
                rater, target = vote[0], vote[1]
                pair_of.append(i)
                rater_of.append(index[rater])
                target_of.append(float(target))
                weight_of.append(cfg.flagged_answer_weight if len(vote) > 2 and vote[2] else 1.0)
                gold_of.append(np.nan if gold_target is None else float(gold_target))
        labels = RaterLabels(
            rater_index=np.array(rater_of, dtype=np.int64),
            target=np.array(target_of, dtype=np.float64),
            gold_target=np.array(gold_of, dtype=np.float64),
            weight=np.array(weight_of, dtype=np.float64),
            rater_ids=rater_ids,
            checks=np.array([checks.get(r, (0, 0)) for r in rater_ids], dtype=np.float64).reshape(-1, 2) if checks else None,
        )
        rows = _Rows(
            pair=np.array(pair_of, dtype=np.int64),
            target=torch.as_tensor(labels.target, dtype=torch.float32, device=device),
            key=keys[np.array(pair_of, dtype=np.int64)],
            labels=labels,
        )
        self._set_row_error_rates(rows)
        return rows

    def _prior_error_rate(self) -> float:
        # The plain loss's random-response rate rr is a mistake rate of rr / 2 (half of random answers are right).
        return min(max(self.config.random_response / 2, 1e-3), 0.5)

    def _set_row_error_rates(self, rows: _Rows) -> None:
        """Each label row's error rate and weight from the raters' estimates (rows past the
        labels -- pseudo-labelled pairs -- keep theirs)."""
        assert rows.labels is not None
        error, temperature, weight = loss_error_rates(rows.labels, self.rater_estimates, self._prior_error_rate())
        n = len(error)
        device = rows.target.device
        if rows.error_rate is None or rows.weight is None or rows.temperature is None:
            rows.error_rate = torch.as_tensor(error, dtype=torch.float32, device=device)
            rows.temperature = torch.as_tensor(temperature, dtype=torch.float32, device=device)
            rows.weight = torch.as_tensor(weight, dtype=torch.float32, device=device)
        else:
            rows.error_rate[:n] = torch.as_tensor(error, dtype=torch.float32, device=device)
            rows.temperature[:n] = torch.as_tensor(temperature, dtype=torch.float32, device=device)
            rows.weight[:n] = torch.as_tensor(weight, dtype=torch.float32, device=device)

    @torch.no_grad()
    def _estimate_raters(self, features: torch.Tensor, mask: torch.Tensor, rows: _Rows, boot: np.ndarray) -> None:
        """E-step: each rater's error rate and temperature from the members' out-of-bag predictions of their labels."""
        assert rows.labels is not None
        cfg, model = self.config, self.model
        n_labels = len(rows.labels.rater_index)  # label rows come first (then pseudo-labelled pairs)
        p_right = self._pair_probabilities(features, mask)[:, rows.pair[:n_labels]]  # (M, labels)
        out_of_bag = np.ones((model.n_members, len(rows.pair)), dtype=bool)
        for member in range(model.n_members):
            out_of_bag[member, boot[member]] = False
        out_of_bag = out_of_bag[:, :n_labels]
        has_oob = out_of_bag.any(axis=0)
        oob_mean = (p_right * out_of_bag).sum(0) / np.maximum(out_of_bag.sum(0), 1)
        p_row = np.where(has_oob, oob_mean, p_right.mean(0))
        estimates = estimate_error_rates(
            rows.labels, p_row, prior_error_rate=self._prior_error_rate(), prior_labels=cfg.prior_labels,
            flag_error_rate=cfg.flag_error_rate, temperature_prior_sd=cfg.temperature_prior_sd,
        )
        if mostly_contradicted(estimates):
            # Dawid-Skene's assumption: the crowd as a whole is better than a coin. A model that
            # contradicts most answers is in the mirrored mode of EM; keep the last estimates.
            return
        self.rater_estimates = estimates
        self._set_row_error_rates(rows)

    @torch.no_grad()
    def _pair_probabilities(self, features: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """``(M, P)`` float64: each member's P(right is better) for every encoded pair."""
        model = self.model
        length, dim = features.shape[-2], features.shape[-1]
        out = []
        for start in range(0, features.shape[0], _EVAL_CHUNK_PAIRS):
            chunk = features[start : start + _EVAL_CHUNK_PAIRS]
            k = chunk.shape[0]
            returns = model.returns_from_features(
                chunk.reshape(k * 2, length, dim), mask[start : start + _EVAL_CHUNK_PAIRS].reshape(k * 2, length)
            ).reshape(model.n_members, k, 2).double()
            out.append(torch.sigmoid(returns[..., 1] - returns[..., 0]).cpu().numpy())
        return np.concatenate(out, axis=1)

    def load_optimizer_state(self, state: dict) -> None:
        """Continue Adam from ``state`` (``optimizer.state_dict()`` of a checkpoint): its moments
        and step counts, with this trainer's own update path (a state saved before the multi-tensor
        path asked for the loop; both compute the same values)."""
        self.optimizer.load_state_dict(state)
        for group in self.optimizer.param_groups:
            group["foreach"] = True

    def counters(self) -> dict[str, int]:
        """The trainer's progress besides the optimiser: fits so far (seeds each fit's shuffles) and
        labelled pairs already fitted (the per-label budget counts the rest)."""
        return {"n_fits": self._n_fits, "pairs_fitted": self.pairs_fitted}

    def restore_counters(self, counters: dict[str, int]) -> None:
        """Continue from :meth:`counters` of a checkpoint."""
        self._n_fits = int(counters.get("n_fits", 0))
        self.pairs_fitted = int(counters.get("pairs_fitted", 0))

    def restore_rater_estimates(self, estimates: Sequence[RaterEstimate] | None) -> None:
        """Continue from a checkpoint's :attr:`rater_estimates`: the first gradient steps after a
        resume weight each rater as the last fit left them (flagged raters stay at weight 0)
        instead of starting everyone again from the prior."""
        self.rater_estimates = None if estimates is None else list(estimates)

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
        self.model.fit_input_normalization(obs[real], actions[real])

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
    def _evaluate(self, features: torch.Tensor, mask: torch.Tensor, rows: _Rows, idx: np.ndarray) -> tuple[float, float | None]:
        """Mean loss of all members on rows ``idx`` and the ensemble-mean accuracy on non-tie rows
        (in reliability mode: on the labels of raters who are not flagged)."""
        model, rr = self.model, self.config.random_response
        loss_sum, correct, decided = 0.0, 0, 0
        length, dim = features.shape[-2], features.shape[-1]
        for start in range(0, len(idx), _EVAL_CHUNK_PAIRS):
            sel_rows = torch.as_tensor(idx[start : start + _EVAL_CHUNK_PAIRS], device=features.device)
            sel = torch.as_tensor(rows.pair, device=features.device)[sel_rows]
            k = sel.shape[0]
            returns = model.returns_from_features(
                features[sel].reshape(k * 2, length, dim), mask[sel].reshape(k * 2, length)
            ).reshape(model.n_members, k, 2)
            t = rows.target[sel_rows]
            counted = t != 0.5
            if rows.error_rate is None:
                loss_sum += float(bradley_terry_loss(returns[..., 0], returns[..., 1], t, rr)) * k
            else:
                assert rows.weight is not None
                w = rows.weight[sel_rows]
                temperature = None if rows.temperature is None else rows.temperature[sel_rows]
                loss_sum += float(rater_bradley_terry_loss(
                    returns[..., 0], returns[..., 1], t, rows.error_rate[sel_rows], w, temperature)) * k
                counted = counted & (w > 0)
            p_right = torch.sigmoid(returns[..., 1] - returns[..., 0]).mean(0)
            correct += int(((p_right > 0.5) == (t > 0.5))[counted].sum())
            decided += int(counted.sum())
        return loss_sum / len(idx), (correct / decided if decided else None)
