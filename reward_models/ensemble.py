"""An ensemble of per-step reward networks, all members evaluated in one batched pass.

Absorbing steps and the reward offset
-------------------------------------
Segments have a fixed length ``L``. When the episode terminated inside a segment, the steps from
``Segment.n_valid`` on are the absorbing state after termination. Those steps contribute exactly 0
learned reward: they are masked out of every segment return, never given a learned value. This is
how prefloop handles variable-horizon environments. With absorbing steps pinned at 0, a constant
added to the reward of every real step changes the return of a segment that ends early by less
than that of a segment that runs to the end, so the Bradley-Terry model *can* learn whether being
alive is good or bad: the reward offset is identifiable. CartPole's agent, for instance, learns a
positive reward for staying up and is therefore not rewarded for dying early.

For the same reason the output normalisation only *scales* rewards (``reward_scale``), it never
shifts them: subtracting a mean would change the value of staying alive relative to the absorbing
state, and could turn "survive" into "die as fast as possible".

Shapes
------
``M`` members, ``B`` steps, ``N`` segments of length ``L``. The network input is the encoded
observation concatenated with the encoded action (see ``prefloop.reward_models.spaces``).

Dict and Tuple observations
---------------------------
For a Dict or Tuple observation space ``*obs_shape`` is ``(D,)``: the observation is the flat
vector ``gymnasium.spaces.flatten(space, obs)`` as float32, ``D = gymnasium.spaces.flatdim(space)``
(what segments store; ``prefloop.structured_obs``). Its layout: the leaves depth-first in the
space's order (a Dict's keys as ``space.spaces`` orders them -- sorted, for a Dict built from a
plain dict -- a Tuple's by position); a Box leaf's values row-major; a ``Discrete(n, start)`` leaf
a one-hot of length ``n`` with 1 at ``x - start``; a MultiDiscrete leaf its entries' one-hots
concatenated; a MultiBinary leaf its 0/1 values. E.g. ``Dict(achieved_goal=Box(2),
desired_goal=Box(2), observation=Box(4))`` gives ``[achieved_goal(2) | desired_goal(2) |
observation(4)]``, D = 8. Columns of bounded Box leaves are then scaled onto ``[-1, 1]``.
``predict`` and the other numpy methods also take the space's own batch structure (a dict or
tuple of ``(B, ...)`` arrays, as SB3 VecEnvs give it) and flatten it the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from prefloop.import_paths import describe
from prefloop.types import Segment

from .numpy_forward import INPUT_CLIP, LEAKY_SLOPE, mean_reward
from .spaces import SpaceEncoder, make_encoder

MemberFactory = Callable[[gym.Space, gym.Space], nn.Module]
"""``(observation_space, action_space) -> module`` with ``module(obs, action) -> reward``: ``obs``
``(B, *observation_space.shape)`` float32 for a Box space (``(B, flatdim)`` otherwise: one-hot for
Discrete, the flat vector of ``prefloop.structured_obs`` for Dict and Tuple),
standardised; ``action`` ``(B, gymnasium.spaces.flatdim(action_space))`` float32 (one-hot for
Discrete), standardised; ``reward`` ``(B,)`` or ``(B, 1)``."""

# Rows per forward pass when scoring many segments, to bound memory (rows * hidden * members).
_CHUNK_ROWS = 32_768
MIN_REWARD_SCALE = 1e-6
# Feature standard deviations are floored here: a feature that was (nearly) constant in the
# labelled data must not be blown up when it later varies.
MIN_INPUT_STD = 0.05


class RewardEnsemble(nn.Module):
    """``n_members`` MLPs ``r(obs, action) -> float`` with weights stacked as ``(M, in, out)``.

    Args:
        observation_space: Box (any shape), Discrete or MultiBinary (MultiDiscrete also works), or
            a Dict or Tuple (nested too) of those without image leaves: see "Dict and Tuple
            observations" above for the flat vector the network reads.
        action_space: Box, Discrete or MultiDiscrete (MultiBinary also works).
        n_members: ensemble size ``M`` (>= 1).
        hidden_sizes: widths of the hidden layers; ``()`` gives a linear model.
        seed: seeds the initial weights; members get different initialisations.
        member_factory: your own member network instead of the stacked MLPs (``hidden_sizes`` is
            then unused): called once per member, under ``torch.manual_seed`` of the seed and the
            member's index, see :data:`MemberFactory`. The ensemble around it -- input
            standardisation, the Bradley-Terry fit, absorbing steps, reward scaling -- stays the
            same. Slower than the stacked MLPs (one forward pass per member).
        action_squares: a Box action also enters squared (see ``spaces.py``), so a control cost
            ``sum(a**2)`` is linear in the inputs; the features are then ``(obs, a, a**2)``.
            Ignored with ``member_factory`` (your network gets the action as it is).
            ``RewardModelConfig`` decides (on unless an env preset says otherwise); off here, and
            for models saved before it existed.

    Raises:
        UnsupportedSpaceError: for Text, Graph, Sequence and other spaces, and image leaves of Dicts.
        ValueError: a member built by ``member_factory`` does not return one reward per row.
    """

    # Rows per forward pass when scoring many steps without a gradient (subclasses with larger
    # inputs, e.g. the CNN ensemble, use fewer).
    chunk_rows = _CHUNK_ROWS
    architecture = "mlp"

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        n_members: int = 3,
        hidden_sizes: Sequence[int] = (64, 64),
        seed: int = 0,
        member_factory: MemberFactory | None = None,
        action_squares: bool = False,
    ) -> None:
        super().__init__()
        if int(n_members) < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        hidden = tuple(int(h) for h in hidden_sizes)
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden_sizes must all be >= 1, got {tuple(hidden_sizes)}")
        self.observation_space = observation_space
        self.action_space = action_space
        self.n_members = int(n_members)
        self.hidden_sizes = hidden
        self.seed = int(seed)
        self.obs_encoder: SpaceEncoder = make_encoder(observation_space, "observation")
        self.action_squares = bool(action_squares) and member_factory is None
        self.action_encoder: SpaceEncoder = make_encoder(action_space, "action", squares=self.action_squares)
        self.input_dim = self.obs_encoder.dim + self.action_encoder.dim

        self.member_factory = member_factory
        self.members = nn.ModuleList()  # the user's member networks (member_factory), else empty
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        if member_factory is not None:
            self.member_obs_shape = (
                tuple(observation_space.shape) if isinstance(observation_space, gym.spaces.Box) else (self.obs_encoder.dim,)
            )
            for member in range(self.n_members):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.seed * 1_000_003 + member)
                    self.members.append(member_factory(observation_space, action_space))
            self._check_members()
        generator = torch.Generator().manual_seed(self.seed)
        sizes = (self.input_dim, *hidden, 1)
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]) if member_factory is None else ():
            # Same init as nn.Linear, drawn independently for each member.
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand(self.n_members, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            b = (torch.rand(self.n_members, 1, fan_out, generator=generator) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
        self.register_buffer("reward_scale", torch.tensor(1.0, dtype=torch.float32))
        # Input standardisation (features - mean) / std, set from labelled data by the trainer
        # (set_input_normalization); identity until then.
        self.register_buffer("input_mean", torch.zeros(self.input_dim, dtype=torch.float32))
        self.register_buffer("input_inv_std", torch.ones(self.input_dim, dtype=torch.float32))

    @property
    def device(self) -> torch.device:
        return self.reward_scale.device

    @property
    def member_factory_name(self) -> str | None:
        """The member factory's import path (what a saved model records), None for the built-in MLPs."""
        return describe(self.member_factory) if self.member_factory is not None else None

    def _check_members(self) -> None:
        where = self.member_factory_name
        for member in self.members:
            if not isinstance(member, nn.Module):
                raise ValueError(f"member_factory {where} returned {type(member).__name__}; it must return a torch.nn.Module")
        try:
            with torch.no_grad():
                rewards = self.rewards_from_features(torch.zeros(2, self.input_dim))
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 -- the user's module, any failure: say what it is given
            raise ValueError(
                f"member_factory {where}: its module failed on obs of shape (2, {', '.join(map(str, self.member_obs_shape))}) "
                f"and action (2, {self.action_encoder.dim}): {type(exc).__name__}: {str(exc)[:200]}; it must "
                "compute forward(obs, action) -> (B,) rewards"
            ) from None
        if rewards.shape != (self.n_members, 2):
            raise ValueError(f"member_factory {where}: its module must return one reward per row, (B,) or (B, 1)")

    def _member_rewards(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`rewards_from_features` for user members: each gets the standardised features
        split into observation ``(B, *obs_shape)`` and action ``(B, act_dim)``."""
        split = self.obs_encoder.dim
        out = []
        for index, member in enumerate(self.members):
            rows = features if features.dim() == 2 else features[index]
            reward = member(rows[:, :split].reshape(-1, *self.member_obs_shape), rows[:, split:])
            if reward.dim() == 2 and reward.shape[1] == 1:
                reward = reward[:, 0]
            if reward.shape != rows.shape[:1]:
                raise ValueError(
                    f"member_factory {self.member_factory_name}: a member returned shape {tuple(reward.shape)} "
                    f"for {rows.shape[0]} rows; it must return one reward per row, (B,) or (B, 1)"
                )
            out.append(reward)
        return torch.stack(out)

    # ----------------------------------------------------------------- tensor API (differentiable)

    def encode(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``obs (B, *obs_shape)``, ``actions (B, *act_shape)`` or ``(B,)`` -> features ``(B, input_dim)``."""
        if obs.shape[0] != actions.shape[0]:
            raise ValueError(f"obs has {obs.shape[0]} rows but actions has {actions.shape[0]}")
        raw = torch.cat((self.obs_encoder(obs), self.action_encoder(actions)), dim=1)
        return ((raw - self.input_mean) * self.input_inv_std).clamp_(-INPUT_CLIP, INPUT_CLIP)

    def raw_features(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(B, input_dim)`` float32: the encoded inputs before standardisation (numpy in, out)."""
        obs, actions = self._checked(obs, actions)
        return np.concatenate((self.obs_encoder.encode_numpy(obs), self.action_encoder.encode_numpy(actions)), axis=1)

    def fit_input_normalization(self, obs: np.ndarray, actions: np.ndarray) -> None:
        """Standardise inputs with the mean and std of these steps' features (real steps only)."""
        features = self.raw_features(obs, actions).astype(np.float64)
        self.set_input_normalization(features.mean(0), features.std(0))

    @torch.no_grad()
    def set_input_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardise the network's inputs with ``mean`` and ``std`` (``(input_dim,)`` each), without
        changing the function the members compute (for inputs inside the clip range).

        The first layer's weights and biases are rescaled to absorb the change, so updating the
        statistics as labels accumulate never moves the reward by itself: only training does.
        ``std`` is floored at ``MIN_INPUT_STD``.
        """
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32), device=self.device).reshape(-1)
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32), device=self.device).reshape(-1)
        if mean_t.shape != (self.input_dim,) or std_t.shape != (self.input_dim,):
            raise ValueError(f"mean and std must have shape ({self.input_dim},), got {tuple(mean_t.shape)}, {tuple(std_t.shape)}")
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all()):
            raise ValueError("input normalisation statistics must be finite")
        new_inv = 1.0 / std_t.clamp(min=MIN_INPUT_STD)
        if self.member_factory is not None:
            # A user's network cannot be rescaled to absorb the change: its function moves with
            # the statistics, and the next fit (right after, in the trainer) follows.
            self.input_mean.copy_(mean_t)
            self.input_inv_std.copy_(new_inv)
            return
        w, b = self.weights[0], self.biases[0]  # (M, in, out), (M, 1, out)
        # old: w^T (x - m) * i + b;  new: w'^T (x - m') * i' + b' with the same value for every x.
        b.add_(((mean_t - self.input_mean) * self.input_inv_std).reshape(1, 1, -1) @ w)
        w.mul_((self.input_inv_std / new_inv).reshape(1, -1, 1))
        self.input_mean.copy_(mean_t)
        self.input_inv_std.copy_(new_inv)

    def rewards_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Raw per-step rewards ``(M, B)`` from features ``(B, in)`` (shared by all members) or
        ``(M, B, in)`` (one batch per member, as bootstrap training uses)."""
        if self.member_factory is not None:
            return self._member_rewards(features)
        if features.dim() == 2:
            # A stride-0 view: every member reads the same rows without copying them.
            h = features.unsqueeze(0).expand(self.n_members, -1, -1)
        else:
            h = features
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                # In place: baddbmm's backward needs its inputs, not its output, and leaky ReLU's
                # backward reads the sign from its output (slope > 0): the same values and
                # gradients without a second activation-sized buffer per layer (a fit step is
                # bound by memory traffic, not arithmetic).
                h = nn.functional.leaky_relu_(h, LEAKY_SLOPE)
        return h.squeeze(-1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) per-step rewards of every member, ``(M, B)`` float32."""
        return self.rewards_from_features(self.encode(obs, actions))

    def returns_from_features(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked segment returns ``(M, N)`` from features ``(N, L, in)`` or ``(M, N, L, in)``
        and ``mask`` ``(N, L)`` or ``(M, N, L)`` (0 on absorbing steps)."""
        n, length = features.shape[-3], features.shape[-2]
        flat = features.reshape(*features.shape[:-3], n * length, features.shape[-1])
        rewards = self.rewards_from_features(flat).reshape(self.n_members, n, length)
        # where(), not just a product: absorbing steps are exactly 0 whatever the net outputs there.
        return torch.where(mask != 0, rewards * mask, 0.0).sum(-1)

    def segment_returns(self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Raw masked returns ``(M, N)`` of segments ``obs (N, L, *obs_shape)``,
        ``actions (N, L, *act_shape)`` or ``(N, L)``, ``mask (N, L)`` float (1 real, 0 absorbing)."""
        n, length = mask.shape
        feats = self.encode(obs.reshape(n * length, *obs.shape[2:]), actions.reshape(n * length, *actions.shape[2:]))
        return self.returns_from_features(feats.reshape(n, length, -1), mask)

    # ------------------------------------------------------------------------ numpy API (no grad)

    def _checked(self, obs: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Numpy inputs validated against the spaces (shapes, row counts, ranges)."""
        obs = self.obs_encoder.as_batch(obs)
        actions = np.asarray(actions)
        if obs.shape[:1] != actions.shape[:1]:
            raise ValueError(f"obs has shape {obs.shape} but actions has shape {actions.shape}: row counts differ")
        self.obs_encoder.check(obs)
        self.action_encoder.check(actions)
        return obs, actions

    def _tensors(self, obs: np.ndarray, actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        obs, actions = self._checked(obs, actions)
        return torch.as_tensor(obs, device=self.device), torch.as_tensor(actions, device=self.device)

    def predict(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The reward the policy is trained on: ensemble-mean raw reward / ``reward_scale``.

        Runs once per env step of RL training, so it is computed in numpy from a copy of the
        weights that is refreshed whenever training has changed them (several times faster than
        torch for a few rows).

        Args:
            obs: ``(B, *obs_shape)``; for Dict and Tuple spaces the flat vectors ``(B, D)`` or the
                batch in the space's structure.
            actions: ``(B, *act_shape)``, or ``(B,)`` ints for Discrete.

        Returns:
            ``(B,)`` float32.
        """
        if self.member_factory is not None:
            return self._predict_torch(obs, actions)
        obs, actions = self._checked(obs, actions)
        if len(obs) <= _CHUNK_ROWS:  # every env step: no output buffer to fill chunk by chunk
            return self._predict_numpy(obs, actions)
        out = np.empty(len(obs), dtype=np.float32)
        for start in range(0, len(obs), _CHUNK_ROWS):
            sl = slice(start, start + _CHUNK_ROWS)
            out[sl] = self._predict_numpy(obs[sl], actions[sl])
        return out

    def _predict_numpy(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """:meth:`predict` of checked rows ``(B, ...)`` -> ``(B,)`` float32, in numpy."""
        weights, biases, scale, mean, inv_std = self._numpy_snapshot()
        features = np.concatenate((self.obs_encoder.encode_numpy(obs), self.action_encoder.encode_numpy(actions)), axis=1)
        return mean_reward(features, weights, biases, mean, inv_std, scale)

    @torch.inference_mode()
    def _predict_torch(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """:meth:`predict` through torch (user members have no numpy copy)."""
        o, a = self._tensors(obs, actions)
        out = [
            self.forward(o[s : s + _CHUNK_ROWS], a[s : s + _CHUNK_ROWS]).mean(0) / self.reward_scale
            for s in range(0, o.shape[0], _CHUNK_ROWS)
        ]
        return torch.cat(out).float().cpu().numpy() if out else np.zeros(0, dtype=np.float32)

    def _numpy_snapshot(self) -> tuple[list[np.ndarray], list[np.ndarray], float, np.ndarray, np.ndarray]:
        """Numpy copies of the weights, remade when any parameter or the scale changed in place."""
        params = self.__dict__.get("_snapshot_params")
        if params is None:
            # A plain list, not registered with nn.Module: attribute access on modules is slow.
            params = self.__dict__["_snapshot_params"] = [
                *self.weights, *self.biases, self.reward_scale, self.input_mean, self.input_inv_std
            ]
        version = [p._version for p in params]
        if self.__dict__.get("_snapshot_version") != version:
            with torch.no_grad():
                self._snapshot = (
                    [w.detach().cpu().numpy().copy() for w in self.weights],
                    [b.detach().cpu().numpy().copy() for b in self.biases],
                    float(self.reward_scale),
                    self.input_mean.detach().cpu().numpy().copy(),
                    self.input_inv_std.detach().cpu().numpy().copy(),
                )
            self.__dict__["_snapshot_version"] = version
        return self._snapshot

    @torch.inference_mode()
    def _raw_returns(self, segments: Sequence[Segment]) -> torch.Tensor:
        """Raw masked returns ``(M, N)`` float32, scored in chunks to bound memory."""
        obs, actions, mask = stack_segments(segments)
        self._tensors(obs[mask > 0], actions[mask > 0])  # range / shape check on real steps only
        length = mask.shape[1]
        per_chunk = max(1, self.chunk_rows // length)
        out = []
        for start in range(0, len(segments), per_chunk):
            sl = slice(start, start + per_chunk)
            out.append(
                self.segment_returns(
                    torch.as_tensor(obs[sl], device=self.device),
                    torch.as_tensor(actions[sl], device=self.device),
                    torch.as_tensor(mask[sl], device=self.device),
                )
            )
        return torch.cat(out, dim=1)

    @torch.inference_mode()
    def preference_probs(self, left: Sequence[Segment], right: Sequence[Segment]) -> np.ndarray:
        """``(M, N)`` float64: each member's P(right[i] is better than left[i]).

        A plain sigmoid of the raw return difference, without the random-response term of the loss
        (query selection wants the members' disagreement, not the teacher's noise).
        """
        if len(left) != len(right):
            raise ValueError(f"left has {len(left)} segments but right has {len(right)}")
        if len(left) == 0:
            return np.zeros((self.n_members, 0), dtype=np.float64)
        # Candidate pairs share segments: score each distinct segment once.
        index: dict[int, int] = {}
        unique: list[Segment] = []
        for seg in (*left, *right):
            if id(seg) not in index:
                index[id(seg)] = len(unique)
                unique.append(seg)
        returns = self._raw_returns(unique).double()
        left_idx = torch.as_tensor([index[id(s)] for s in left])
        right_idx = torch.as_tensor([index[id(s)] for s in right])
        return torch.sigmoid(returns[:, right_idx] - returns[:, left_idx]).cpu().numpy()

    @torch.inference_mode()
    def predict_segment_returns(self, segments: Sequence[Segment]) -> np.ndarray:
        """``(N,)`` float64: normalised ensemble-mean masked return of each segment."""
        if len(segments) == 0:
            return np.zeros(0, dtype=np.float64)
        returns = self._raw_returns(segments).double().mean(0) / float(self.reward_scale)
        return returns.cpu().numpy()

    @torch.inference_mode()
    def update_normalization(self, obs: np.ndarray, actions: np.ndarray) -> None:
        """Set ``reward_scale`` to the root mean square of the ensemble-mean raw reward over these steps.

        Afterwards the policy's rewards have a mean square of 1 on such steps. Pass real steps only
        (no absorbing padding). Only a scale, never a shift: see the module docstring. The root
        mean square rather than the std, because when nearly every step earns the same reward
        (every CartPole state the policy visits is "alive") the std is tiny and dividing by it
        would blow rewards up a hundredfold and destabilise the value function. Floored at 1e-6.

        Args:
            obs: ``(B, *obs_shape)`` with ``B >= 2``.
            actions: ``(B, *act_shape)`` or ``(B,)``.
        """
        o, a = self._tensors(obs, actions)
        if o.shape[0] < 2:
            raise ValueError(f"update_normalization needs at least 2 steps, got {o.shape[0]}")
        means = torch.cat(
            [
                self.forward(o[s : s + self.chunk_rows], a[s : s + self.chunk_rows]).mean(0)
                for s in range(0, o.shape[0], self.chunk_rows)
            ]
        )
        rms = float(means.double().square().mean().sqrt())
        if not math.isfinite(rms):
            raise ValueError("reward model outputs are not finite; cannot normalise (was training diverging?)")
        self.reward_scale.fill_(max(rms, MIN_REWARD_SCALE))

    def update_normalization_from_segments(self, segments: Sequence[Segment]) -> None:
        """:meth:`update_normalization` over the real (non-absorbing) steps of ``segments``."""
        if len(segments) == 0:
            raise ValueError("update_normalization_from_segments needs at least one segment")
        obs, actions, mask = stack_segments(segments)
        real = mask > 0
        self.update_normalization(obs[real], actions[real])

    def extra_repr(self) -> str:
        return (
            f"observation_space={self.observation_space}, action_space={self.action_space}, "
            f"n_members={self.n_members}, "
            + (f"member_factory={self.member_factory_name}" if self.member_factory is not None else f"hidden_sizes={self.hidden_sizes}")
        )


def stack_segments(segments: Sequence[Segment]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack segments into ``obs (N, L, *obs_shape)``, ``actions (N, L, *act_shape)`` and
    ``mask (N, L)`` float32 (1 on real steps, 0 on absorbing steps).

    Raises:
        ValueError: when segments differ in length or shapes, or ``n_valid`` is out of range.
    """
    if len(segments) == 0:
        raise ValueError("no segments given")
    first = segments[0]
    length = first.length
    for i, seg in enumerate(segments):
        if seg.obs.shape[:1] != (length,) or seg.actions.shape[:1] != (length,) or seg.length != length:
            raise ValueError(
                f"segment {i} has obs {seg.obs.shape}, actions {seg.actions.shape}, "
                f"true_rewards {seg.true_rewards.shape}; all segments must have length {length} "
                "like segment 0"
            )
        if seg.obs.shape != first.obs.shape or seg.actions.shape != first.actions.shape:
            raise ValueError(
                f"segment {i} has obs {seg.obs.shape} / actions {seg.actions.shape}, "
                f"segment 0 has {first.obs.shape} / {first.actions.shape}"
            )
        if not 1 <= seg.n_valid <= length:
            raise ValueError(f"segment {i} has n_valid={seg.n_valid}, expected 1..{length}")
    obs = np.stack([s.obs for s in segments])
    actions = np.stack([s.actions for s in segments])
    n_valid = np.array([s.n_valid for s in segments])
    mask = (np.arange(length)[None, :] < n_valid[:, None]).astype(np.float32)
    return obs, actions, mask
