"""The scale of the learned reward: fixed on a reference set, so it neither shrinks nor drifts.

Bradley-Terry preferences say which segment is better, not by how much in reward units, so the
learned reward's raw scale is arbitrary and changes at every fit (it grows as the model becomes
sure of more labels). The policy, however, needs a stable scale -- SAC's entropy bonus and PPO's
value targets do not follow a moving one. Rescaling at every fit so that the *newest* segments
have RMS 1 (what prefloop did before) makes the reward shrink exactly as the policy improves: on
Hopper the learned reward ended at 0.35-0.39 of the true one, and SAC on the true reward x 0.4
falls from 1650 to 316.

The choice here: after every fit the reward is divided by its root mean square over a **fixed
reference set** -- the distinct segments of the first label round (the earliest-asked labelled
pairs; a random policy's or the exploration policy's steps). The set never changes once the first
round is answered, and it lives in the store, so a resumed run finds the same one. A better policy
then earns more learned reward, as it earns more true reward, and the unit stays the same fit
after fit (``tests/test_reward_scale.py`` measures the band as labels accumulate).
A root mean square, not a standard deviation, and no shift: see ``prefloop.reward_models.ensemble``.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefloop.reward_models import RewardEnsemble
from prefloop.types import LabeledPair, Segment


def reference_segments(labeled: Sequence[LabeledPair], reference_pairs: int) -> list[Segment]:
    """The distinct segments of the ``reference_pairs`` earliest-asked pairs of ``labeled``
    (ordered by pair id when they have ids, else as given)."""
    ordered = sorted(labeled, key=lambda p: p.pair_id) if all(p.pair_id is not None for p in labeled) else list(labeled)
    seen: dict[int, Segment] = {}
    for pair in ordered[: max(1, reference_pairs)]:
        seen.setdefault(id(pair.left), pair.left)
        seen.setdefault(id(pair.right), pair.right)
    return list(seen.values())


def normalize_on_reference(model: RewardEnsemble, labeled: Sequence[LabeledPair], reference_pairs: int) -> None:
    """Set ``model.reward_scale`` so that its reward has RMS 1 on :func:`reference_segments`."""
    model.update_normalization_from_segments(reference_segments(labeled, reference_pairs))
